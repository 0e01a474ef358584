#!/usr/bin/env bash
# Start Redis (127.0.0.1:6379) and Mosquitto (127.0.0.1:1883) unless they already answer,
# and PostgreSQL where the machine has a cluster that is down. Idempotent.
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! answers 6379; then
  command -v redis-server >/dev/null || { echo "redis-server not installed: run scripts/setup.sh" >&2; exit 1; }
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/citybrain-redis.log
fi
if ! answers 1883; then
  command -v mosquitto >/dev/null || PATH=$PATH:/usr/sbin
  command -v mosquitto >/dev/null || { echo "mosquitto not installed: run scripts/setup.sh" >&2; exit 1; }
  echo "starting mosquitto on 127.0.0.1:1883"
  printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' > /tmp/citybrain-mosquitto.conf
  mosquitto -d -c /tmp/citybrain-mosquitto.conf
fi
if ! answers 5432 && command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
  echo "starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
for i in $(seq 1 50); do
  answers 6379 && answers 1883 && exit 0
  sleep 0.2
done
answers 6379 || echo "redis does not answer on 6379" >&2
answers 1883 || echo "mosquitto does not answer on 1883" >&2
exit 1
