#!/usr/bin/env bash
# Add (or change) an MQTT password for a device or service user.
#   deploy/mosquitto/add-device.sh PASSWORD_FILE USERNAME [PASSWORD]
# Without PASSWORD a random one is generated and printed once. The username of a
# device must be its device id (letters, digits, '_', '.', '-'; see the ACL's %u).
# Reload the broker afterwards: systemctl reload mosquitto (or kill -HUP).
set -euo pipefail
if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 PASSWORD_FILE USERNAME [PASSWORD]" >&2
  exit 2
fi
file=$1 user=$2 pass=${3:-}
if [[ ! $user =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ ]]; then
  echo "error: invalid username '$user': use letters, digits, '_', '.', '-'" >&2
  exit 2
fi
command -v mosquitto_passwd >/dev/null || { echo "error: mosquitto_passwd not found" >&2; exit 2; }
generated=0
if [[ -z $pass ]]; then
  pass=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)
  generated=1
fi
if [[ -f $file ]]; then
  mosquitto_passwd -b "$file" "$user" "$pass"
else
  mosquitto_passwd -c -b "$file" "$user" "$pass"
fi
chmod 600 "$file" 2>/dev/null || true
if [[ $generated == 1 ]]; then
  echo "$pass"
fi
