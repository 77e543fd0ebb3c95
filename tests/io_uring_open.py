# An openat submitted through an io_uring (no openat syscall): creates the file named by
# argv[1]. Used by tests/evasion.rs.
import ctypes, mmap, struct, os, sys
libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
p = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, p)
assert fd >= 0, ctypes.get_errno()
n = struct.unpack_from('I', p, 0)[0]
head, tail, mask, entries, flags, dropped, array = struct.unpack_from('7I', p, 40)
ring = mmap.mmap(fd, array + n * 4, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
sqes = mmap.mmap(fd, n * 64, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0x10000000)
path = ctypes.create_string_buffer(sys.argv[1].encode())
sqes[0:64] = struct.pack('BBHiQQIIQ', 18, 0, 0, -100, 0, ctypes.addressof(path), 0o644, os.O_CREAT | os.O_WRONLY, 1) + bytes(24)
t = struct.unpack_from('I', ring, tail)[0]
m = struct.unpack_from('I', ring, mask)[0]
struct.pack_into('I', ring, array + (t & m) * 4, 0)
struct.pack_into('I', ring, tail, t + 1)
r = libc.syscall(426, fd, 1, 1, 1, 0, 0)
assert r == 1, (r, ctypes.get_errno())
