#!/bin/sh
# Renders /etc/rabbitmq/definitions.json into /tmp/rabbitmq/definitions.json
# with the credentials from the environment, then hands over to the image's
# own entrypoint. Defaults: tally/tally for the services, admin/admin for the
# management UI (see README.md). Names and passwords may not contain a double
# quote, a backslash or a '|'.
set -eu

: "${RABBITMQ_USER:=tally}"
: "${RABBITMQ_PASSWORD:=tally}"
: "${RABBITMQ_ADMIN_USER:=admin}"
: "${RABBITMQ_ADMIN_PASSWORD:=admin}"

for value in "$RABBITMQ_USER" "$RABBITMQ_PASSWORD" "$RABBITMQ_ADMIN_USER" "$RABBITMQ_ADMIN_PASSWORD"; do
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
sed -e "s|\${RABBITMQ_USER}|$(escape "$RABBITMQ_USER")|g" \
    -e "s|\${RABBITMQ_PASSWORD}|$(escape "$RABBITMQ_PASSWORD")|g" \
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
