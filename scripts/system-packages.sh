#!/usr/bin/env bash
# The system packages a task needs that this machine lacks, installed with apt-get when run as root;
# otherwise the one command that installs them is printed and the script fails. scripts/task runs it first.
#
#   scripts/system-packages.sh TASK [TASK...]    e.g. scripts/system-packages.sh test
#
# What needs what: every task needs Python's venv module (.venv), unless .venv exists; the tasks that start
# the local broker (demo, test, kafka:up, bench, bench:flow, bench:replay, bench:soak) need Java 17+, and
# Maven until the Kafka jars are cached; test needs Chromium (the browser tests of the dashboard and report)
# and OpenSSL (the TLS tests make their certificates).
# Environment: EDDY_SYSTEM_PACKAGES=skip skips the check; EDDY_PYTHON, EDDY_CACHE as for scripts/task and
# scripts/kafka.sh; EDDY_VENV (default .venv in the repository).
set -euo pipefail

KAFKA_VERSION=4.1.1
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${EDDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eddy}"
venv="${EDDY_VENV:-$repo/.venv}"

case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --) shift ;;  # what follows is a task command line (scripts/task's arguments), --help included
esac
[ "${EDDY_SYSTEM_PACKAGES:-}" = "skip" ] && exit 0

broker=false
browser=false
for task in "$@"; do
  case "$task" in
    demo|kafka:up|bench|bench:flow|bench:replay|bench:soak) broker=true ;;
    test) broker=true; browser=true ;;
  esac
done

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

packages=()
needs=()
if [ ! -x "$venv/bin/python" ] && ! "${EDDY_PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3-venv)
  needs+=("Python's venv module")
fi
if $broker; then
  major=""
  command -v java >/dev/null 2>&1 && major="$(java_major)"
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    packages+=(default-jre-headless)
    needs+=("Java 17 or newer${major:+ (this one is $major)}")
  fi
  if [ ! -f "$cache/kafka-$KAFKA_VERSION/libs/kafka_2.13-$KAFKA_VERSION.jar" ] && ! command -v mvn >/dev/null 2>&1; then
    packages+=(maven)
    needs+=("Maven (once, to fetch Kafka from Maven Central)")
  fi
fi
if $browser && ! command -v chromium >/dev/null 2>&1; then
  packages+=(chromium)
  needs+=("Chromium (the dashboard's browser tests)")
fi
if $browser && ! command -v openssl >/dev/null 2>&1; then
  packages+=(openssl)
  needs+=("OpenSSL (the TLS tests' certificates)")
fi
[ ${#packages[@]} -eq 0 ] && exit 0

what="${needs[0]}"
for need in "${needs[@]:1}"; do what="$what, $need"; done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "eddy: error: '$*' needs $what, and this is not a Debian-like system (no apt-get); install them, then run it again" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "eddy: error: '$*' needs $what; install them with this command, then run it again:" >&2
  echo "  sudo sh -c 'apt-get update && apt-get install -y ${packages[*]}'" >&2
  exit 1
fi
echo "eddy: installing ${packages[*]} with apt-get ($what)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}"
