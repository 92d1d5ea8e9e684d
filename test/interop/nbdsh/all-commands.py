# Every NBD command and flag the daemon advertises, driven through libnbd (python3-libnbd).
#
# Run inside nbdsh, where `h` is a handle already connected with base:allocation:
#   nbdsh --base-allocation -u nbd://127.0.0.1:PORT/VOLUME \
#         -c "exec(open('test/interop/nbdsh/all-commands.py').read())"
# The volume must be fresh (never written) and at least 16 MiB.
#
# Any mismatch raises (SystemExit or nbd.Error), so nbdsh exits non-zero; the last line
# printed on success is ALL-COMMANDS-OK. Each step prints "ok: ..." so a failure shows how
# far it got.
import errno
import nbd

KiB = 1024
MiB = 1024 * KiB
HOLE_ZERO = nbd.STATE_HOLE | nbd.STATE_ZERO


def check(condition, what):
    if not condition:
        raise SystemExit("FAIL: " + what)
    print("ok: " + what, flush=True)


def pattern(length, seed):
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(length))


def expect_error(call, errnum, what):
    try:
        call()
    except nbd.Error as err:
        check(err.errnum == errnum,
              "%s fails with %s (got %s: %s)" % (what, errno.errorcode[errnum], err.errno, err.string))
        return
    raise SystemExit("FAIL: %s succeeded, expected %s" % (what, errno.errorcode[errnum]))


def read_chunks(handle, count, offset, flags=0):
    """pread_structured, returning the data and the chunks as (offset, length, status, error)."""
    chunks = []

    def on_chunk(subbuf, chunk_offset, status, error):
        chunks.append((chunk_offset, len(subbuf), status, error.value))
        return 0

    data = handle.pread_structured(count, offset, on_chunk, flags)
    return bytes(data), chunks


def extents(handle, count, offset, flags=0):
    """block_status for base:allocation, as a list of (length, flags)."""
    found = []

    def on_extent(metacontext, extent_offset, entries, error):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            check(extent_offset == offset, "block status extents start at the requested offset")
            found.extend(zip(entries[0::2], entries[1::2]))
        return 0

    handle.block_status(count, offset, on_extent, flags)
    return found


def state_at(handle, offset):
    """The base:allocation flags of the 4 KiB at offset, asked with REQ_ONE."""
    found = extents(handle, 4 * KiB, offset, nbd.CMD_FLAG_REQ_ONE)
    check(len(found) == 1, "REQ_ONE at %d returns exactly one extent" % offset)
    check(0 < found[0][0] <= 4 * KiB, "REQ_ONE extent at %d does not exceed the request" % offset)
    return found[0][1]


uri = h.get_uri()
size = h.get_size()

# --- What the server advertises -------------------------------------------------------
check(size >= 16 * MiB, "export is at least 16 MiB (%d)" % size)
check(h.get_structured_replies_negotiated(), "structured replies negotiated")
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation negotiated")
check(not h.is_read_only(), "export is writable")
for name in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_df", "can_multi_conn", "can_cache"):
    check(getattr(h, name)(), name)
check(h.get_block_size(nbd.SIZE_MINIMUM) == 1, "minimum block size 1")
check(h.get_block_size(nbd.SIZE_PREFERRED) == 4096, "preferred block size 4096")
check(h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * MiB, "maximum block size 32 MiB")

# --- A fresh volume reads as zeroes and is one hole ----------------------------------------
check(h.pread(64 * KiB, 0) == bytes(64 * KiB), "fresh volume reads zeroes")
check(state_at(h, 0) == HOLE_ZERO, "fresh volume is hole,zero")

# --- WRITE, with and without FUA; READ back -------------------------------------------
data_a = pattern(64 * KiB, 1)
h.pwrite(data_a, 0)
check(h.pread(64 * KiB, 0) == data_a, "pwrite then pread returns the data")
data_b = pattern(8 * KiB, 2)
h.pwrite(data_b, 1 * MiB, nbd.CMD_FLAG_FUA)
check(h.pread(8 * KiB, 1 * MiB) == data_b, "pwrite with FUA then pread returns the data")
odd = pattern(1000, 3)
h.pwrite(odd, 2 * MiB + 100)
around = h.pread(8 * KiB, 2 * MiB)
check(around == bytes(100) + odd + bytes(8 * KiB - 1100), "unaligned write keeps the rest of its chunk zero")
h.flush()
check(True, "flush")

# --- Structured READ: chunks cover the request exactly, data and holes --------------------
span = 2 * MiB + 8 * KiB  # data at 0, hole, data at 1 MiB, hole, odd write at 2 MiB
expected = bytearray(span)
expected[0:64 * KiB] = data_a
expected[1 * MiB:1 * MiB + 8 * KiB] = data_b
expected[2 * MiB + 100:2 * MiB + 1100] = odd
expected = bytes(expected)
got, chunks = read_chunks(h, span, 0)
check(got == expected, "pread_structured returns the right bytes")
check(len(chunks) >= 1, "pread_structured delivered chunks")
check(all(status in (nbd.READ_DATA, nbd.READ_HOLE) for (_, _, status, _) in chunks), "chunks are data or hole")
check(all(error == 0 for (_, _, _, error) in chunks), "no chunk carries an error")
covered = sorted((offset, length) for (offset, length, _, _) in chunks)
position = 0
for (offset, length) in covered:
    check(offset == position and length > 0, "chunk at %d follows the previous one without gap or overlap" % offset)
    position += length
check(position == span, "chunks cover the whole request")
for (offset, length, status, _) in chunks:
    if status == nbd.READ_HOLE:
        check(expected[offset:offset + length] == bytes(length), "hole chunk at %d is really zero" % offset)

# --- READ with DF (libnbd takes DF on pread_structured): one chunk, same bytes ---------
got, chunks = read_chunks(h, span, 0, nbd.CMD_FLAG_DF)
check(got == expected, "pread_structured with DF returns the right bytes")
check(len(chunks) == 1 and chunks[0][0] == 0 and chunks[0][1] == span, "DF read arrives as exactly one chunk")

# --- BLOCK_STATUS with and without REQ_ONE ----------------------------------------------
check(state_at(h, 0) & nbd.STATE_HOLE == 0, "written chunk is not a hole")
check(state_at(h, 0) == 0, "written chunk is data")
check(state_at(h, 512 * KiB) == HOLE_ZERO, "unwritten chunk is hole,zero")
check(state_at(h, 1 * MiB) == 0, "FUA-written chunk is data")
check(state_at(h, 2 * MiB) == 0, "chunk of the unaligned write is data")
found = extents(h, 4 * MiB, 0)
check(len(found) >= 4, "block status over mixed range returns several extents (%d)" % len(found))
check(sum(length for (length, _) in found) <= 4 * MiB, "extents do not exceed the request")
check(found[0] == (64 * KiB, 0), "first extent is the 64 KiB of data (%r)" % (found[0],))
check(found[1] == (1 * MiB - 64 * KiB, HOLE_ZERO), "second extent is the hole up to 1 MiB (%r)" % (found[1],))
check(all(flags in (0, HOLE_ZERO) for (_, flags) in found), "only data and hole,zero extents")
one = extents(h, 4 * MiB, 0, nbd.CMD_FLAG_REQ_ONE)
check(one == [(64 * KiB, 0)], "REQ_ONE over the mixed range returns just the first extent (%r)" % (one,))

# --- TRIM (with and without FUA) --------------------------------------------------------
h.pwrite(pattern(64 * KiB, 4), 4 * MiB)
h.trim(64 * KiB, 4 * MiB)
check(h.pread(64 * KiB, 4 * MiB) == bytes(64 * KiB), "trimmed whole chunks read as zero")
check(state_at(h, 4 * MiB) == HOLE_ZERO, "trimmed range is hole,zero")
h.pwrite(pattern(64 * KiB, 5), 4 * MiB + 64 * KiB)
h.trim(64 * KiB, 4 * MiB + 64 * KiB, nbd.CMD_FLAG_FUA)
check(state_at(h, 4 * MiB + 64 * KiB) == HOLE_ZERO, "trim with FUA leaves a hole")

# --- WRITE_ZEROES: plain, FUA, NO_HOLE, FAST_ZERO, unaligned --------------------------------
h.pwrite(pattern(64 * KiB, 6), 5 * MiB)
h.zero(64 * KiB, 5 * MiB)
check(h.pread(64 * KiB, 5 * MiB) == bytes(64 * KiB), "zero reads back as zeroes")
check(state_at(h, 5 * MiB) & nbd.STATE_ZERO, "zeroed range reports the zero flag")

h.pwrite(pattern(64 * KiB, 7), 6 * MiB)
h.zero(64 * KiB, 6 * MiB, nbd.CMD_FLAG_NO_HOLE)
check(h.pread(64 * KiB, 6 * MiB) == bytes(64 * KiB), "zero with NO_HOLE reads back as zeroes")
check(state_at(h, 6 * MiB) & nbd.STATE_HOLE == 0, "zero with NO_HOLE leaves no hole")

h.pwrite(pattern(64 * KiB, 8), 7 * MiB)
h.zero(64 * KiB, 7 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
check(h.pread(64 * KiB, 7 * MiB) == bytes(64 * KiB), "fast zero (with FUA) reads back as zeroes")
check(state_at(h, 7 * MiB) == HOLE_ZERO, "fast zero of whole chunks leaves hole,zero")

# FAST_ZERO with NO_HOLE: the server may decline with ENOTSUP (that is what the flag is for),
# but must never report success without zeroing.
h.pwrite(pattern(64 * KiB, 9), 8 * MiB)
try:
    h.zero(64 * KiB, 8 * MiB, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    check(h.pread(64 * KiB, 8 * MiB) == bytes(64 * KiB), "fast zero with NO_HOLE succeeded and zeroed")
except nbd.Error as err:
    check(err.errnum == errno.ENOTSUP, "fast zero with NO_HOLE declined with ENOTSUP (got %s)" % err.errno)

edge = pattern(8 * KiB, 10)
h.pwrite(edge, 9 * MiB)
h.zero(1000, 9 * MiB + 100)
check(h.pread(8 * KiB, 9 * MiB) == edge[:100] + bytes(1000) + edge[1100:], "unaligned zero touches only its bytes")

# --- CACHE ----------------------------------------------------------------------------
h.cache(64 * KiB, 0)
check(h.pread(64 * KiB, 0) == data_a, "cache succeeds and changes nothing")

# --- Errors: out of range, bad flags; the connection survives them -------------------------
h.set_strict_mode(0)  # let the requests reach the server instead of libnbd refusing them
expect_error(lambda: h.pread(4096, size), errno.EINVAL, "read past the end")
expect_error(lambda: h.pread(8192, size - 4096), errno.EINVAL, "read straddling the end")
expect_error(lambda: h.pwrite(bytes(4096), size), errno.ENOSPC, "write past the end")
expect_error(lambda: h.pwrite(bytes(8192), size - 4096), errno.ENOSPC, "write straddling the end")
expect_error(lambda: h.zero(4096, size), errno.ENOSPC, "zero past the end")
check(h.pread(4096, 0, nbd.CMD_FLAG_FUA) == data_a[:4096], "read with FUA is accepted (spec: FUA is valid on every command)")
h.flush(nbd.CMD_FLAG_FUA)
expect_error(lambda: h.trim(4096, size), errno.EINVAL, "trim past the end")
expect_error(lambda: h.pread(4096, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL, "read with NO_HOLE")
check(h.pread(span, 0, nbd.CMD_FLAG_DF) == expected, "plain pread with DF returns the right bytes")
check(h.pread(64 * KiB, 0) == data_a, "connection still serves after rejected requests")
check(h.pread(4096, size - 4096) == bytes(4096), "last 4 KiB of the export is readable")
h.pwrite(pattern(4096, 11), size - 4096, nbd.CMD_FLAG_FUA)
check(h.pread(4096, size - 4096) == pattern(4096, 11), "last 4 KiB of the export is writable")
h.set_strict_mode(nbd.STRICT_MASK)

# --- Multi-conn: a second connection sees the first one's flushed writes -------------------
h2 = nbd.NBD()
h2.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h2.connect_uri(uri)
shared = pattern(16 * KiB, 12)
h.pwrite(shared, 10 * MiB)
h.flush()
check(h2.pread(16 * KiB, 10 * MiB) == shared, "second connection reads the first one's flushed write")
h2.pwrite(pattern(16 * KiB, 13), 10 * MiB, nbd.CMD_FLAG_FUA)
check(h.pread(16 * KiB, 10 * MiB) == pattern(16 * KiB, 13), "first connection reads the second one's FUA write")
h2.shutdown()

# --- Simple replies (no structured replies negotiated) ------------------------------------
simple = nbd.NBD()
simple.set_request_structured_replies(False)
simple.connect_uri(uri)
check(not simple.get_structured_replies_negotiated(), "simple-reply connection did not negotiate structured replies")
check(not simple.can_df(), "DF is not offered without structured replies")
check(simple.pread(span, 0) == expected, "pread over simple replies returns the right bytes")
simple.pwrite(pattern(4 * KiB, 14), 11 * MiB)
simple.pwrite(pattern(4 * KiB, 15), 11 * MiB + 4 * KiB, nbd.CMD_FLAG_FUA)
simple.flush()
check(simple.pread(8 * KiB, 11 * MiB) == pattern(4 * KiB, 14) + pattern(4 * KiB, 15), "writes over simple replies read back")
simple.zero(4 * KiB, 11 * MiB)
simple.trim(4 * KiB, 11 * MiB + 4 * KiB)
simple.cache(8 * KiB, 11 * MiB)
check(simple.pread(8 * KiB, 11 * MiB) == bytes(8 * KiB), "zero and trim over simple replies read back as zero")
simple.set_strict_mode(0)
expect_error(lambda: simple.pread(4096, size), errno.EINVAL, "simple-reply read past the end")
expect_error(lambda: simple.pwrite(bytes(4096), size), errno.ENOSPC, "simple-reply write past the end")
expect_error(lambda: simple.pread(4096, 0, nbd.CMD_FLAG_DF), errno.EINVAL, "DF without structured replies")
check(simple.pread(4096, 0) == data_a[:4096], "simple-reply connection still serves after errors")
simple.shutdown()

# --- Clean shutdown (NBD_CMD_DISC) -----------------------------------------------------
h.shutdown()
check(h.aio_is_closed(), "shutdown closed the connection cleanly (aio_is_closed %s, dead %s)" % (h.aio_is_closed(), h.aio_is_dead()))
print("ALL-COMMANDS-OK", flush=True)
