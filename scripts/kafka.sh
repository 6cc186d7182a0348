#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft) for development, tests and the demo, built from Maven
# Central jars: no Kafka download site and no Docker needed.
#
#   scripts/kafka.sh up       fetch the jars on first use, format storage, start, wait until it accepts connections
#   scripts/kafka.sh down     stop the broker this script started (by pid)
#   scripts/kafka.sh status   say whether it runs
#   scripts/kafka.sh logs     print the last lines of its log
#
# Environment: KAFKA_PORT (default 9092), KAFKA_CONTROLLER_PORT (default 9093), EDDY_KAFKA_HOME (data, logs
# and pid; default .eddy/kafka in the repository, git-ignored), EDDY_CACHE (jar cache; default
# ~/.cache/eddy), KAFKA_START_TIMEOUT (seconds, default 60), KAFKA_SASL_PORT (unset: none; set: a second
# listener, SASL_PLAINTEXT with the PLAIN mechanism, on localhost:PORT) with KAFKA_SASL_USERS (its accounts,
# "user:password,user:password"; needed with KAFKA_SASL_PORT), KAFKA_SSL_PORT (unset: none; set: a TLS
# listener on localhost:PORT) with KAFKA_SSL_KEYSTORE (a PEM file: the broker's private key, PKCS#8 and
# encrypted, then its certificate chain) and KAFKA_SSL_KEYSTORE_PASSWORD. The PLAINTEXT listener stays on KAFKA_PORT.
set -euo pipefail

KAFKA_VERSION=4.1.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
home="${EDDY_KAFKA_HOME:-$repo/.eddy/kafka}"
cache="${EDDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eddy}"
libs="$cache/kafka-$KAFKA_VERSION/libs"
pidfile="$home/broker.pid"
log="$home/logs/broker.log"
timeout="${KAFKA_START_TIMEOUT:-60}"
sasl_port="${KAFKA_SASL_PORT:-}"
sasl_users="${KAFKA_SASL_USERS:-}"
ssl_port="${KAFKA_SSL_PORT:-}"

say() { echo "kafka: $*"; }
die() { echo "kafka: error: $*" >&2; exit 1; }

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_java() {
  command -v java >/dev/null 2>&1 || die "Java 17 or newer is needed to run Kafka $KAFKA_VERSION, and 'java' is not on PATH (Debian: apt-get install openjdk-17-jre-headless)."
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "Kafka $KAFKA_VERSION needs Java 17 or newer; 'java' here is version ${major:-unknown}."
}

fetch_jars() {
  [ -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ] && return 0
  command -v mvn >/dev/null 2>&1 || die "Maven ('mvn') is needed once to fetch Kafka $KAFKA_VERSION from Maven Central, and it is not on PATH (Debian: apt-get install maven)."
  say "fetching Kafka $KAFKA_VERSION jars from Maven Central into $libs (first use only, ~45 MB)"
  mkdir -p "$libs.partial"
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs.partial" -DincludeScope=runtime -Dkafka.version="$KAFKA_VERSION" \
    || die "could not fetch the Kafka jars with Maven (is Maven Central reachable?)"
  rm -rf "$libs" && mv "$libs.partial" "$libs"
}

# The JAAS line of the SASL listener: one user_NAME="PASSWORD" per account of KAFKA_SASL_USERS.
sasl_jaas() {
  local accounts=() entry user password
  IFS=',' read -r -a entries <<<"$sasl_users"
  for entry in "${entries[@]}"; do
    user="${entry%%:*}"
    password="${entry#*:}"
    [ -n "$user" ] && [ "$user" != "$entry" ] && [[ "$user$password" != *[\"\ \;]* ]] \
      || die "KAFKA_SASL_USERS entry '${entry%%:*}:...' is not user:password (no spaces, quotes or semicolons)"
    accounts+=("user_$user=\"$password\"")
  done
  echo "org.apache.kafka.common.security.plain.PlainLoginModule required ${accounts[*]};"
}

write_config() {
  mkdir -p "$home/data" "$home/logs"
  local listeners="PLAINTEXT://localhost:$port,CONTROLLER://localhost:$controller_port"
  local advertised="PLAINTEXT://localhost:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local sasl=""
  if [ -n "$sasl_port" ]; then
    [ -n "$sasl_users" ] || die "KAFKA_SASL_PORT is set but KAFKA_SASL_USERS is empty; give the accounts as user:password,..."
    listeners="$listeners,SASL_PLAINTEXT://localhost:$sasl_port"
    advertised="$advertised,SASL_PLAINTEXT://localhost:$sasl_port"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
    sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=$(sasl_jaas)"
  fi
  local tls=""
  if [ -n "$ssl_port" ]; then
    [ -f "${KAFKA_SSL_KEYSTORE:-}" ] || die "KAFKA_SSL_PORT is set but KAFKA_SSL_KEYSTORE ('${KAFKA_SSL_KEYSTORE:-}') is not a PEM file"
    [ -n "${KAFKA_SSL_KEYSTORE_PASSWORD:-}" ] || die "KAFKA_SSL_PORT is set but KAFKA_SSL_KEYSTORE_PASSWORD (the password of its key) is empty"
    listeners="$listeners,SSL://localhost:$ssl_port"
    advertised="$advertised,SSL://localhost:$ssl_port"
    protocols="$protocols,SSL:SSL"
    tls="listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$KAFKA_SSL_KEYSTORE
listener.name.ssl.ssl.key.password=$KAFKA_SSL_KEYSTORE_PASSWORD"
  fi
  cat > "$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=localhost:$controller_port
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
$sasl
$tls
log.dirs=$home/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=2097152
log.retention.hours=168
EOF
  chmod 600 "$home/server.properties"  # it may hold the SASL accounts' passwords
  cat > "$home/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
}


up() {
  local pid
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on localhost:$port; log: $log"
    return 0
  fi
  if port_open "$port"; then
    die "port $port is already in use by another program; stop it, or start eddy's broker on another port with KAFKA_PORT=... (and point eddy at it with KAFKA_BOOTSTRAP_SERVERS=localhost:PORT)"
  fi
  check_java
  fetch_jars
  write_config
  if [ ! -f "$home/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java -Dlog4j2.configurationFile="$home/log4j2.properties" -cp "$libs/*" kafka.tools.StorageTool \
      format --standalone -t "$cluster_id" -c "$home/server.properties" >"$home/logs/format.log" 2>&1 \
      || die "formatting the broker's storage failed; see $home/logs/format.log"
  fi
  : >"$home/logs/stdout.log"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$home/server.properties" >>"$home/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  pid="$(cat "$pidfile")"
  say "starting Kafka $KAFKA_VERSION (pid $pid) on localhost:$port"
  local waited=0
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$home/logs/stdout.log" "$log" 2>/dev/null >&2 || true
      rm -f "$pidfile"
      die "the broker exited during start-up; its log is $log"
    fi
    if [ "$waited" -ge "$((timeout * 5))" ]; then
      die "the broker did not accept connections on localhost:$port within ${timeout}s; its log is $log"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  if [ -n "$sasl_port" ]; then
    until port_open "$sasl_port"; do
      [ "$waited" -lt "$((timeout * 5))" ] || die "the broker's SASL listener did not open on localhost:$sasl_port within ${timeout}s; its log is $log"
      sleep 0.2
      waited=$((waited + 1))
    done
    say "SASL_PLAINTEXT (PLAIN) listener on localhost:$sasl_port"
  fi
  if [ -n "$ssl_port" ]; then
    until port_open "$ssl_port"; do
      [ "$waited" -lt "$((timeout * 5))" ] || die "the broker's TLS listener did not open on localhost:$ssl_port within ${timeout}s; its log is $log"
      sleep 0.2
      waited=$((waited + 1))
    done
    say "SSL listener on localhost:$ssl_port"
  fi
  say "ready on localhost:$port (pid $pid); log: $log"
}

down() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  kill "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "broker did not stop within 30s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "stopped (pid $pid)"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    say "running (pid $pid) on localhost:$port; log: $log"
  else
    say "not running"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) tail -n "${2:-50}" "$log" ;;
  reset) down; rm -rf "$home"; say "data removed ($home)" ;;
  -h|--help|help|"") sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (use up, down, status, logs or reset)" ;;
esac
