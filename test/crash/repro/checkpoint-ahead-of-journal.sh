#!/usr/bin/env bash
# Bug: an index checkpoint that covers more journal than the segment holds (segment restored
# from an older copy) is trusted: scanSegment's "index checkpoint points past the end of the
# segment" is taken for a torn tail (nothing durable claims it), so Journal.open neither
# throws nor rebuilds. seqLast comes from the checkpoint, the index points past the end of
# the segment, new records are appended there with a seq gap, and reads of the old ranges
# then return the new records' bytes without an error.
set -u
. "$(dirname "$0")/lib.sh"
start --create-volume v:16M
qemu-io -f raw -c 'write -P 0x11 0 1M' "$URI" > /dev/null
stop
cp "$SEG" "$D/older.seg"
start
qemu-io -f raw -c 'write -P 0x22 1M 1M' "$URI" > /dev/null
stop
cp "$D/older.seg" "$SEG"                    # journal back to seq 1..2; index.ckpt says seq 4
start
info                                        # expected: seqLast 2 (index rebuilt); actual: 4
echo "  read 1M..2M (journal holds zeroes there):"
qemu-io -f raw -c 'read -P 0 1M 1M' "$URI" 2>&1 | grep -i 'pattern\|error' || echo "  read OK"
qemu-io -f raw -c 'write -P 0x33 4M 1M' "$URI" > /dev/null
echo "  after writing 0x33 at 4M, read 1M..2M again:"
nbdcopy "$URI" "$D/img.raw" 2>&1 | head -2
od -A d -t x1 -j $((1024*1024)) -N 32 "$D/img.raw" | sed 's/^/    /'
$HS fsck v --api $API; echo "  fsck exit $?"
stop
