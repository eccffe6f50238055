#!/bin/sh
# The bench's one system package: Mosquitto (Debian), installed when missing and we may (root, apt-get).
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "bench: installing mosquitto (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto) >/dev/null 2>&1 \
      || echo "bench: could not install mosquitto; its runs will be listed as not run"
  else
    echo "bench: mosquitto is not installed (apt-get install mosquitto); its runs will be listed as not run"
  fi
fi
