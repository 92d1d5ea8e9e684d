#!/usr/bin/env bash
# Bug: a record damaged in the middle of the journal is NOT detected at start when the index
# checkpoint covers it (any clean stop writes such a checkpoint): the volume comes up online
# and READ returns the damaged bytes without an error. fsck finds it; a full replay does too.
set -u
. "$(dirname "$0")/lib.sh"
start --create-volume v:16M
# seq 1 WRITE at segment offset 64 (payload at 120), then flushes and a second write whose
# header says seq >= 1 was durable: damage to seq 1 is corruption, not a torn tail.
qemu-io -f raw -c 'write -P 0x11 0 64k' -c flush -c 'write -P 0x22 1M 64k' -c flush "$URI" > /dev/null
stop
printf '\xee' | dd of="$SEG" bs=1 seek=$((64 + 56 + 100)) conv=notrunc status=none   # payload byte 100 of seq 1
echo "after a clean stop and one flipped payload byte in record seq 1 (offset 64):"
start
info                                        # expected: failed JOURNAL_CORRUPT; actual: online
qemu-io -f raw -c 'read -P 0x11 0 64k' "$URI" 2>&1 | grep -i 'pattern\|error' || echo "  read OK"
$HS fsck v --api $API; echo "  fsck exit $?"   # exit 2, names 00000001.seg offset 64
stop
echo "the same journal without index.ckpt (full replay):"
rm "$D/volumes/v/index.ckpt"
start
info                                        # failed JOURNAL_CORRUPT ... offset 64 (correct)
stop
