#!/usr/bin/env bash
# Installs nginx + the nchan module from Debian's packages, for the peer
# measurements in bench/compare.sh.
#
# The distribution's nginx service is never started: a temporary
# policy-rc.d tells the package scripts not to start services (only when
# none exists already), so nothing listens on port 80 afterwards and the
# benchmark nginx is run solely by bench/nchan/start.sh with its own config.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
    echo "nginx + nchan already installed: $(nginx -v 2>&1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends nginx libnginx-mod-nchan

echo "installed: $(nginx -v 2>&1)"
ls /usr/lib/nginx/modules/ | grep -i nchan
