#!/bin/sh
# Renders /etc/rabbitmq/definitions.json into /tmp/rabbitmq/definitions.json
# with the credentials from the environment, then hands over to the image's
# own entrypoint. Three users (see README.md, "Broker users"): the adder's
# (publish only), the totaler's (consume only) and the management UI's
# administrator. Names default to tally-adder, tally-totaler and admin; the
# passwords have no default: the broker does not start without them. Names
# and passwords may not contain a double quote, a backslash or a '|'.
set -eu

: "${RABBITMQ_ADDER_USER:=tally-adder}"
: "${RABBITMQ_TOTALER_USER:=tally-totaler}"
: "${RABBITMQ_ADMIN_USER:=admin}"
for name in RABBITMQ_ADDER_PASSWORD RABBITMQ_TOTALER_PASSWORD RABBITMQ_ADMIN_PASSWORD; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "entrypoint.sh: set $name (see .env.example)" >&2
        exit 64
    fi
done

for value in "$RABBITMQ_ADDER_USER" "$RABBITMQ_ADDER_PASSWORD" "$RABBITMQ_TOTALER_USER" \
    "$RABBITMQ_TOTALER_PASSWORD" "$RABBITMQ_ADMIN_USER" "$RABBITMQ_ADMIN_PASSWORD"; do
    case "$value" in
        *'"'* | *'\'* | *'|'*)
            echo "entrypoint.sh: RabbitMQ credentials may not contain \", \\ or |" >&2
            exit 64
            ;;
    esac
done

# sed treats '&' in a replacement as "the match": escape it.
escape() { printf '%s' "$1" | sed 's/&/\\&/g'; }

mkdir -p /tmp/rabbitmq
sed -e "s|\${RABBITMQ_ADDER_USER}|$(escape "$RABBITMQ_ADDER_USER")|g" \
    -e "s|\${RABBITMQ_ADDER_PASSWORD}|$(escape "$RABBITMQ_ADDER_PASSWORD")|g" \
    -e "s|\${RABBITMQ_TOTALER_USER}|$(escape "$RABBITMQ_TOTALER_USER")|g" \
    -e "s|\${RABBITMQ_TOTALER_PASSWORD}|$(escape "$RABBITMQ_TOTALER_PASSWORD")|g" \
    -e "s|\${RABBITMQ_ADMIN_USER}|$(escape "$RABBITMQ_ADMIN_USER")|g" \
    -e "s|\${RABBITMQ_ADMIN_PASSWORD}|$(escape "$RABBITMQ_ADMIN_PASSWORD")|g" \
    /etc/rabbitmq/definitions.json > /tmp/rabbitmq/definitions.json.tmp
chmod 0640 /tmp/rabbitmq/definitions.json.tmp
mv /tmp/rabbitmq/definitions.json.tmp /tmp/rabbitmq/definitions.json
# The node may run as the rabbitmq user: let it read the rendered file.
if id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq /tmp/rabbitmq 2>/dev/null || true
fi

exec docker-entrypoint.sh "$@"
