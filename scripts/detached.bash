# Sourced by scripts/stack and scripts/cluster (not run): detached processes
# that outlive the script, each with its pid in $RUN_DIR/NAME.pid and its
# output appended to $RUN_DIR/NAME.log; the binaries they run; and the apt
# step that installs missing tools. The caller sets RUN_DIR and defines say() and die().

pid_of() { cat "$RUN_DIR/$1.pid" 2>/dev/null || true; }
running() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

# Waits until URL answers 2xx, or the process NAME died, or 60 s went by.
wait_ready() {
  local name=$1 url=$2
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    running "$name" || die "$name exited; see $RUN_DIR/$name.log"
    sleep 0.5
  done
  die "$name did not answer $url within 60 s; see $RUN_DIR/$name.log"
}

# Starts NAME (a command line) detached in a session of its own (so that
# `kill_group` reaches its children too), with its log and pid in RUN_DIR.
start() {
  local name=$1; shift
  if running "$name"; then say "$name already runs (pid $(pid_of "$name"))"; return 0; fi
  say "starting $name"
  setsid "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

# SIGTERM to NAME, SIGKILL after 30 s.
stop() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then rm -f "$RUN_DIR/$name.pid"; return 0; fi
  say "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "$name still runs after 30 s: SIGKILL"; kill -KILL "$pid"; fi
  rm -f "$RUN_DIR/$name.pid"
}

# SIGKILL to NAME's whole process group (setsid made it the leader), as a
# crash would: nothing is flushed, nothing is closed cleanly.
kill_group() {
  local name=$1 pid
  pid=$(pid_of "$name")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "$name does not run"
  say "killing $name (SIGKILL to process group $pid)"
  kill -KILL -- "-$pid"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$RUN_DIR/$name.pid"
}

# The adder and totaler binaries to run, in BIN_DIR: TALLY_BIN_DIR's, or
# release builds made here.
binaries() {
  if [ -n "${TALLY_BIN_DIR:-}" ]; then
    BIN_DIR="$TALLY_BIN_DIR"
  else
    say "building adder and totaler (release)"
    cargo build --release --locked -p adder -p totaler
    BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  fi
  [ -x "$BIN_DIR/adder" ] && [ -x "$BIN_DIR/totaler" ] || die "no adder/totaler in $BIN_DIR"
}

# Installs the Debian packages named, as root or through sudo.
apt_install() {
  [ $# -gt 0 ] || return 0
  say "installing $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
