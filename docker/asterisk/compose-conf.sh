#!/bin/sh
# Adapt the shipped asterisk-conf/ (written for loopback: Asterisk and stc-server on one host) to
# the compose stack, where stc-server reaches Asterisk's SIP over the `pbx` network and its ARI
# and AMI over `pbx-control`, a network only the two of them are on:
#   compose-conf.sh CONF_DIR ASTERISK_IP STC_SERVER_IP PBX_SUBNET ASTERISK_CONTROL_IP STC_SERVER_CONTROL_IP SYSTEM_NAME
# STC_SERVER_CONTROL_IP may list several addresses, comma-separated: every stc-server of a
# cluster follows every Asterisk node's AMI. SYSTEM_NAME: this node's own name (asterisk.conf's
# systemname), so two nodes never give channels the same uniqueid.
# Each rewrite names the line it expects; a missing line, or any loopback address left outside
# a comment afterwards, fails the image build, so asterisk-conf/ cannot drift silently.
set -eu

[ $# -eq 7 ] || { echo "usage: $0 CONF_DIR ASTERISK_IP STC_SERVER_IP PBX_SUBNET ASTERISK_CONTROL_IP STC_SERVER_CONTROL_IP SYSTEM_NAME" >&2; exit 2; }
conf=$1 asterisk_ip=$2 server_ip=$3 pbx_subnet=$4 control_ip=$5 server_control_ip=$6 system_name=$7

fail() { echo "compose-conf: $*" >&2; exit 1; }

# rewrite FILE MIN SED_PATTERN REPLACEMENT: replace every match (at least MIN lines must match).
rewrite() {
    file=$conf/$1 min=$2 pattern=$3 replacement=$4
    [ -f "$file" ] || fail "no $1 in $conf"
    count=$(grep -c -E "$pattern" "$file" || true)
    [ "$count" -ge "$min" ] || fail "$1: expected a line matching '$pattern' (asterisk-conf/ changed? update docker/asterisk/compose-conf.sh)"
    sed -i -E "s#$pattern#$replacement#" "$file"
}

# SIP from the relay: listen on the pbx address; any caller on the pbx network reaches the
# dialplan, where the admission AGI (not PJSIP) decides who joins.
rewrite pjsip.conf 1 '^bind = 127\.0\.0\.1:' "bind = $asterisk_ip:"
rewrite pjsip.conf 1 '^match = 127\.0\.0\.1([[:space:]]|$)' "match = $pbx_subnet\\1"
# ARI (HTTP, which has no ACL) and AMI only on the pbx-control address, which nothing but the
# stc-server reaches; AMI logins only from the stc-server's address there.
rewrite http.conf 1 '^bindaddr = 127\.0\.0\.1' "bindaddr = $control_ip"
rewrite manager.conf 1 '^bindaddr = 127\.0\.0\.1' "bindaddr = $control_ip"
permits=""
for ip in $(echo "$server_control_ip" | tr ',' ' '); do
    permits="${permits:+$permits\\n}permit = $ip/255.255.255.255"   # sed makes \n a new line
done
rewrite manager.conf 1 '^permit = 127\.0\.0\.1/255\.255\.255\.255' "$permits"
# Channel uniqueids start with the node's name (a name, not text for sed or a uniqueid to trip on).
echo "$system_name" | grep -q -x -E '[A-Za-z0-9][A-Za-z0-9_-]{0,39}' || fail "SYSTEM_NAME '$system_name': letters, digits, - and _ only"
rewrite asterisk.conf 1 '^;systemname = this-node$' "systemname = $system_name"
# The admission FastAGI runs in the stc-server (also in comments, so the hint stays right).
rewrite extensions.conf 0 'agi://127\.0\.0\.1:' "agi://$server_ip:"

left=$(grep -n -E '^[^;]*(127\.0\.0\.1|localhost)' "$conf"/*.conf || true)
[ -z "$left" ] || fail "loopback addresses this script does not rewrite (update docker/asterisk/compose-conf.sh):
$left"
echo "compose-conf: $conf is node $system_name, binds SIP to $asterisk_ip (from $pbx_subnet), ARI/AMI to $control_ip (AMI from $server_control_ip only)"
