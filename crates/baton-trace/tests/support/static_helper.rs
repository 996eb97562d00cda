// Source of the statically linked helper the integration tests compile with
// `rustc -C target-feature=+crt-static`; it is not part of the test crate itself
// (`tests/trace.rs` embeds it with `include_str!`).
//
// Arguments are operations run in order, each `op=argument`:
//   read=PATH, write=PATH, stat=PATH, list=DIR, thread-read=PATH (in a new thread),
//   access-null=_ (faccessat with a NULL path),
//   openat=DIR:REL (openat(2) relative to an open directory fd), openat2=PATH (raw openat2(2),
//   read-only, x86-64 and aarch64 number 437), connect=ADDR (TCP),
//   child=OP (runs this program again with the single operation OP and waits).
use std::ffi::CString;
use std::io::Write;

unsafe extern "C" {
    fn openat(dirfd: i32, path: *const std::ffi::c_char, flags: i32, ...) -> i32;
    fn close(fd: i32) -> i32;
    fn syscall(number: i64, ...) -> i64;
}

fn main() {
    for arg in std::env::args().skip(1) {
        let (op, value) = arg.split_once('=').expect("op=value");
        match op {
            "read" => {
                std::fs::read(value).expect("read");
            }
            "write" => std::fs::write(value, b"written by helper").expect("write"),
            "stat" => {
                let _ = std::fs::metadata(value);
            }
            "list" => {
                for entry in std::fs::read_dir(value).expect("read_dir") {
                    entry.expect("entry");
                }
            }
            "thread-read" => {
                let path = value.to_owned();
                std::thread::spawn(move || std::fs::read(path).expect("thread read"))
                    .join()
                    .expect("join");
            }
            "openat" => {
                use std::os::fd::AsRawFd;
                let (dir, rel) = value.split_once(':').expect("DIR:REL");
                let dir = std::fs::File::open(dir).expect("open dir");
                let rel = CString::new(rel).expect("no NUL");
                let fd = unsafe { openat(dir.as_raw_fd(), rel.as_ptr(), 0) };
                assert!(fd >= 0, "openat failed");
                unsafe { close(fd) };
            }
            "openat2" => {
                // struct open_how { u64 flags; u64 mode; u64 resolve; }, all zero: O_RDONLY.
                let how = [0u64; 3];
                let path = CString::new(value).expect("no NUL");
                let fd = unsafe { syscall(437, -100i64, path.as_ptr(), how.as_ptr(), 24usize) };
                assert!(fd >= 0, "openat2 failed");
                unsafe { close(fd as i32) };
            }
            "unresolvable" => {
                use std::os::fd::AsRawFd;
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
                let rel = CString::new("x").expect("no NUL");
                let fd = unsafe { openat(socket.as_raw_fd(), rel.as_ptr(), 0) };
                assert!(fd < 0, "openat relative to a socket must fail");
                // SYS_openat is 257 on x86-64 and 56 on aarch64.
                let nr = if cfg!(target_arch = "aarch64") { 56 } else { 257 };
                let fd = unsafe { syscall(nr, -100i64, 8usize, 0i64) };
                assert!(fd < 0, "openat of an unmapped pointer must fail");
            }
            "access-null" => {
                // faccessat(AT_FDCWD, NULL, F_OK): fails with EFAULT, touches nothing (seen
                // from node/libuv); x86-64 number 269, aarch64 48.
                let nr = if cfg!(target_arch = "aarch64") { 48 } else { 269 };
                let _ = value;
                let r = unsafe { syscall(nr, -100i64, 0usize, 0i64) };
                assert!(r < 0, "faccessat(NULL) must fail");
            }
            "connect" => {
                let mut stream = std::net::TcpStream::connect(value).expect("connect");
                stream.write_all(b"hi").expect("write to socket");
            }
            "child" => {
                let exe = std::env::current_exe().expect("current_exe");
                let status = std::process::Command::new(exe).arg(value).status().expect("spawn");
                assert!(status.success(), "child failed");
            }
            other => panic!("unknown op {other}"),
        }
    }
}
