#!/bin/sh
# Write the hostname page (only known at run time), then become Apache as PID 1.
set -e
host=$(uname -n)
cat > /var/www/html/index.html <<HTML
<!doctype html>
<html><head><title>upstreamd backend $host</title></head>
<body><pre>
hostname: $host
</pre></body></html>
HTML

# Test hook: START_DELAY=<seconds> keeps Apache from listening that long
# (a slow starter, as a JVM would be).
if [ -n "${START_DELAY:-}" ]; then
	sleep "$START_DELAY"
fi

. /etc/apache2/envvars
# As apache2ctl does: mod_cgid's socket dir and the lock dir belong to www-data.
mkdir -p "$APACHE_RUN_DIR/socks" "$APACHE_LOCK_DIR"
chown "$APACHE_RUN_USER" "$APACHE_RUN_DIR/socks" "$APACHE_LOCK_DIR"
rm -f "$APACHE_PID_FILE"
exec /usr/sbin/apache2 -DFOREGROUND "$@"
