# Shared by scripts/asterisk-lab.sh and scripts/docker-base.sh: handling a debootstrap'd Debian
# sid root. Sourced, not run; the caller defines die().

# Refuse to delete anything that has a mount point inside it: a bind-mounted /dev would be the
# host's /dev, and a debootstrap killed half-way can leave its /proc or /sys mounted in the root.
safe_remove_tree() {
    local dir=$1 mount_point
    [[ -n $dir && $dir != / ]] || die "refusing to remove '$dir'"
    while read -r _ _ _ _ mount_point _; do
        if [[ $mount_point == "$dir" || $mount_point == "$dir"/* ]]; then
            die "refusing to remove $dir: $mount_point is mounted inside it (umount it first)"
        fi
    done </proc/self/mountinfo
    rm -rf --one-file-system -- "$dir"
}

# The fixes every fresh sid root needs (asterisk-lab pitfalls 1 and 2): apt accepts the mirror's
# dated snapshot, and package maintainer scripts never start services inside the root.
#   sid_root_basics ROOT APT_CONF_RELATIVE_PATH WHO
sid_root_basics() {
    local root=$1 apt_conf=$2 who=$3
    # The mirror may serve a dated snapshot whose Release file has "expired".
    printf 'Acquire::Check-Valid-Until "false";\n' >"$root/$apt_conf"
    printf '#!/bin/sh\n# %s: never start services from maintainer scripts in this root\nexit 101\n' "$who" \
        >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
}
