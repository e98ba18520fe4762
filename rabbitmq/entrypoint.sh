#!/bin/sh
# Renders /etc/rabbitmq/definitions.json into /tmp/rabbitmq/definitions.json
# with the credentials of the three broker users (see
# docs/internals/broker.md): the adder's (publish only), the totaler's (consume only) and the
# management UI's administrator; then hands over to the image's own
# entrypoint. Names default to tally-adder, tally-totaler and admin.
# Each password comes from RABBITMQ_<USER>_PASSWORD_FILE (a file, as compose's
# generated secrets: the official images' *_FILE convention, trailing line
# break dropped) or RABBITMQ_<USER>_PASSWORD, never both; there is no
# default: the broker does not start without them, and a file that is
# missing or empty is named. Names and passwords may not contain a double
# quote, a backslash or a '|'.
#
#   entrypoint.sh render-definitions   renders the definitions and stops
#                                      (a check, without a broker)
# TALLY_DEFINITIONS_TEMPLATE and TALLY_DEFINITIONS_DIR move the template
# (/etc/rabbitmq/definitions.json) and the output (/tmp/rabbitmq).
#
# Two settings for a cluster node (compose.cluster.yml), unset on a single node:
# - RABBITMQ_ERLANG_COOKIE_FILE: a file (compose's generated secret) holding
#   the Erlang cookie every node of the cluster shares; it is installed as
#   the node's (and the CLI tools') ~/.erlang.cookie. The repo carries no cookie.
# - RABBITMQ_QUORUM_GROUP_SIZE: replicas of each quorum queue; the rendered
#   definitions declare it as x-quorum-initial-group-size.
set -eu

template=${TALLY_DEFINITIONS_TEMPLATE:-/etc/rabbitmq/definitions.json}
out=${TALLY_DEFINITIONS_DIR:-/tmp/rabbitmq}

: "${RABBITMQ_ADDER_USER:=tally-adder}"
: "${RABBITMQ_TOTALER_USER:=tally-totaler}"
: "${RABBITMQ_ADMIN_USER:=admin}"
for name in RABBITMQ_ADDER_PASSWORD RABBITMQ_TOTALER_PASSWORD RABBITMQ_ADMIN_PASSWORD; do
    eval "value=\${$name:-} file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        if [ -n "$value" ]; then
            echo "entrypoint.sh: set ${name}_FILE or $name, not both" >&2
            exit 64
        fi
        value=$(cat "$file") || {
            echo "entrypoint.sh: ${name}_FILE: cannot read $file" >&2
            exit 64
        }
        [ -n "$value" ] || {
            echo "entrypoint.sh: ${name}_FILE: $file is empty" >&2
            exit 64
        }
        eval "$name=\$value"
    elif [ -z "$value" ]; then
        echo "entrypoint.sh: set ${name}_FILE or $name (compose.yml's secrets service makes the file)" >&2
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

# On a cluster node, each quorum queue's type is followed by its group size
# (a sed command that changes nothing on a single node).
case "${RABBITMQ_QUORUM_GROUP_SIZE:-}" in
    '') group_size='s/^//' ;;
    *[!0-9]* | 0*)
        echo "entrypoint.sh: RABBITMQ_QUORUM_GROUP_SIZE must be a positive number" >&2
        exit 64
        ;;
    *) group_size="s/\"x-queue-type\": \"quorum\"/&, \"x-quorum-initial-group-size\": $RABBITMQ_QUORUM_GROUP_SIZE/" ;;
esac

# sed treats '&' in a replacement as "the match": escape it.
escape() { printf '%s' "$1" | sed 's/&/\\&/g'; }

# Installs the shared Erlang cookie, when there is one, where the node and
# the CLI tools (HOME=/var/lib/rabbitmq) read it: owner-only, no newline.
install_cookie() {
    file=${RABBITMQ_ERLANG_COOKIE_FILE:-}
    [ -n "$file" ] || return 0
    cookie=$(tr -d '[:space:]' < "$file") || {
        echo "entrypoint.sh: cannot read the Erlang cookie file $file" >&2
        exit 64
    }
    if [ "${#cookie}" -lt 20 ]; then
        echo "entrypoint.sh: the Erlang cookie in $file is shorter than 20 characters" >&2
        exit 64
    fi
    target=/var/lib/rabbitmq/.erlang.cookie
    (umask 077 && printf '%s' "$cookie" > "$target.tmp")
    mv "$target.tmp" "$target"
    chmod 0400 "$target"
}

mkdir -p "$out"
sed -e "s|\${RABBITMQ_ADDER_USER}|$(escape "$RABBITMQ_ADDER_USER")|g" \
    -e "s|\${RABBITMQ_ADDER_PASSWORD}|$(escape "$RABBITMQ_ADDER_PASSWORD")|g" \
    -e "s|\${RABBITMQ_TOTALER_USER}|$(escape "$RABBITMQ_TOTALER_USER")|g" \
    -e "s|\${RABBITMQ_TOTALER_PASSWORD}|$(escape "$RABBITMQ_TOTALER_PASSWORD")|g" \
    -e "s|\${RABBITMQ_ADMIN_USER}|$(escape "$RABBITMQ_ADMIN_USER")|g" \
    -e "s|\${RABBITMQ_ADMIN_PASSWORD}|$(escape "$RABBITMQ_ADMIN_PASSWORD")|g" \
    -e "$group_size" \
    "$template" > "$out/definitions.json.tmp"
chmod 0640 "$out/definitions.json.tmp"
mv "$out/definitions.json.tmp" "$out/definitions.json"
[ "${1:-}" != render-definitions ] || exit 0
# The node may run as the rabbitmq user: let it read the rendered file.
if id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$out" 2>/dev/null || true
fi

install_cookie
exec docker-entrypoint.sh "$@"
