//! The typed FUSE operations of [`FsClient`]: the core set (INIT,
//! lookups, attributes, files and directories, reads and writes), then
//! links and special files (SYMLINK, READLINK, LINK, MKNOD), extended
//! attributes (SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR), FALLOCATE,
//! LSEEK and ACCESS.

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, AttrOut, CreateIn, EntryOut, FallocateIn, FlushIn, ForgetIn, FsOptions as InitFlags,
    FsyncIn, GetattrIn, GetxattrIn, GetxattrOut, InitIn, InitOut, Kstatfs, LinkIn, LseekIn,
    LseekOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, ReadIn, ReleaseIn, RenameIn, SetattrIn,
    SetattrValid, SetxattrIn, StatfsOut, WriteIn, WriteOut, FSYNC_FDATASYNC, GETATTR_FH,
    KERNEL_VERSION,
};

use super::wire::{self, body_struct, read_prefix, DirEntry, DirEntryPlus, Request};
use super::{Creds, FsClient, FsError, Result, Session};

/// FATTR_FH: `SetattrIn.fh` is valid (not among fuse-backend-rs's `SetattrValid`).
const FATTR_FH: u32 = 0x40;
/// Directory read size used by [`FsClient::list_dir`].
const LIST_DIR_CHUNK: u32 = 64 * 1024;

/// The requests the typed operations send, for callers that send them
/// their own way (several in flight: [`super::Pipeline`]).
impl Request {
    /// FUSE_LOOKUP of `name` in `parent`.
    pub fn lookup(parent: u64, name: &[u8]) -> Result<Self> {
        Request::new("LOOKUP", Opcode::Lookup, parent).name(name)
    }

    /// FUSE_GETATTR, through `fh` if given.
    pub fn getattr(nodeid: u64, fh: Option<u64>) -> Self {
        let arg = GetattrIn {
            flags: if fh.is_some() { GETATTR_FH } else { 0 },
            dummy: 0,
            fh: fh.unwrap_or(0),
        };
        Request::new("GETATTR", Opcode::Getattr, nodeid).arg(&arg)
    }

    /// FUSE_CREATE of `name` in `parent` (umask 0) with `open(2)` flags.
    pub fn create(parent: u64, name: &[u8], mode: u32, flags: i32) -> Result<Self> {
        Self::create_umask(parent, name, mode, flags, 0)
    }

    /// FUSE_CREATE of `name` in `parent` with `open(2)` flags and the
    /// caller's `umask`.
    fn create_umask(parent: u64, name: &[u8], mode: u32, flags: i32, umask: u32) -> Result<Self> {
        let arg = CreateIn {
            flags: flags as u32,
            mode,
            umask,
            fuse_flags: 0,
        };
        Request::new("CREATE", Opcode::Create, parent)
            .arg(&arg)
            .name(name)
    }

    /// FUSE_MKDIR of `name` in `parent` (umask 0).
    pub fn mkdir(parent: u64, name: &[u8], mode: u32) -> Result<Self> {
        Request::new("MKDIR", Opcode::Mkdir, parent)
            .arg(&MkdirIn { mode, umask: 0 })
            .name(name)
    }

    /// FUSE_READ of up to `len` bytes at `offset` through `fh`.
    pub fn read(fh: u64, nodeid: u64, offset: u64, len: u32) -> Self {
        let arg = ReadIn {
            fh,
            offset,
            size: len,
            ..Default::default()
        };
        Request::new("READ", Opcode::Read, nodeid).arg(&arg)
    }

    /// FUSE_RELEASE of file handle `fh`.
    pub fn release(fh: u64, nodeid: u64, flags: i32) -> Self {
        let arg = ReleaseIn {
            fh,
            flags: flags as u32,
            ..Default::default()
        };
        Request::new("RELEASE", Opcode::Release, nodeid).arg(&arg)
    }

    /// FUSE_GETXATTR of `name` into a buffer of `size` bytes (0: ask the size).
    fn getxattr(nodeid: u64, name: &[u8], size: u32) -> Result<Self> {
        Request::new("GETXATTR", Opcode::Getxattr, nodeid)
            .arg(&GetxattrIn { size, padding: 0 })
            .name(name)
    }

    /// FUSE_LISTXATTR into a buffer of `size` bytes (0: ask the size).
    fn listxattr(nodeid: u64, size: u32) -> Self {
        Request::new("LISTXATTR", Opcode::Listxattr, nodeid).arg(&GetxattrIn { size, padding: 0 })
    }
}

/// What a SETATTR changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// Permission bits (and type bits, which servers ignore).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (truncate or extend).
    pub size: Option<u64>,
    /// Access time (seconds, nanoseconds).
    pub atime: Option<(u64, u32)>,
    /// Modification time (seconds, nanoseconds).
    pub mtime: Option<(u64, u32)>,
    /// Open file handle to act through.
    pub fh: Option<u64>,
}

impl SetAttr {
    /// The `fuse_setattr_in` for these changes.
    pub fn to_wire(&self) -> SetattrIn {
        let mut s = SetattrIn::default();
        let mut valid = SetattrValid::empty();
        if let Some(m) = self.mode {
            valid |= SetattrValid::MODE;
            s.mode = m;
        }
        if let Some(u) = self.uid {
            valid |= SetattrValid::UID;
            s.uid = u;
        }
        if let Some(g) = self.gid {
            valid |= SetattrValid::GID;
            s.gid = g;
        }
        if let Some(sz) = self.size {
            valid |= SetattrValid::SIZE;
            s.size = sz;
        }
        if let Some((sec, nsec)) = self.atime {
            valid |= SetattrValid::ATIME;
            s.atime = sec;
            s.atimensec = nsec;
        }
        if let Some((sec, nsec)) = self.mtime {
            valid |= SetattrValid::MTIME;
            s.mtime = sec;
            s.mtimensec = nsec;
        }
        s.valid = valid.bits();
        if let Some(fh) = self.fh {
            s.valid |= FATTR_FH;
            s.fh = fh;
        }
        s
    }
}

fn size_of<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

impl FsClient {
    /// Sends a request whose reply is exactly a `T`.
    fn call_struct<T: vm_memory::ByteValued + Default>(&mut self, req: &Request) -> Result<T> {
        let body = self.call(req, 0, size_of::<T>())?;
        body_struct(req.op, &body)
    }

    /// Sends a request that makes `parent/name` with `arg` before the name
    /// (MKDIR, MKNOD, LINK); the new entry.
    fn call_new_entry<A: vm_memory::ByteValued>(
        &mut self,
        op: &'static str,
        opcode: Opcode,
        parent: u64,
        arg: &A,
        name: &[u8],
    ) -> Result<EntryOut> {
        self.call_struct(&Request::new(op, opcode, parent).arg(arg).name(name)?)
    }

    /// Sends a FUSE_CREATE: the new entry and its open handle.
    fn call_create(&mut self, req: &Request) -> Result<(EntryOut, OpenOut)> {
        let body = self.call(req, 0, size_of::<EntryOut>() + size_of::<OpenOut>())?;
        let entry: EntryOut = body_struct("CREATE", &body)?;
        let open: OpenOut = body_struct(
            "CREATE",
            &body[body.len().min(std::mem::size_of::<EntryOut>())..],
        )?;
        Ok((entry, open))
    }

    /// Sends a GETXATTR or LISTXATTR of size 0: the size the value needs.
    fn call_xattr_size(&mut self, req: &Request) -> Result<u32> {
        let out: GetxattrOut = self.call_struct(req)?;
        Ok(out.size)
    }

    /// Sends a request whose reply has no body.
    fn call_empty(&mut self, req: &Request) -> Result<()> {
        let body = self.call(req, 0, 0)?;
        if body.is_empty() {
            Ok(())
        } else {
            Err(FsError::BadReply {
                op: req.op,
                reason: format!("{} body bytes where none were expected", body.len()),
            })
        }
    }

    /// FUSE_INIT: offers version 7.`minor` and `init_flags` from the options;
    /// remembers the reply (see [`FsClient::session`]).
    pub fn init(&mut self) -> Result<Session> {
        let flags = self.opts.init_flags.bits();
        let arg = InitIn {
            major: KERNEL_VERSION,
            minor: self.opts.minor,
            max_readahead: self.opts.max_io,
            flags: flags as u32,
        };
        let req = Request::new("INIT", Opcode::Init, 0).arg(&arg);
        let body = self.call(&req, 0, size_of::<InitOut>())?;
        if body.len() < 8 {
            return Err(FsError::BadReply {
                op: "INIT",
                reason: format!("fuse_init_out of {} bytes", body.len()),
            });
        }
        let init: InitOut = read_prefix(&body);
        if init.major != KERNEL_VERSION {
            return Err(FsError::BadReply {
                op: "INIT",
                reason: format!("server speaks FUSE {}.{}", init.major, init.minor),
            });
        }
        let returned = u64::from(init.flags) | (u64::from(init.flags2) << 32);
        let session = Session {
            init,
            init_len: body.len(),
            flags: InitFlags::from_bits_truncate(returned & flags),
        };
        self.session = Some(session);
        Ok(session)
    }

    /// The server's `max_write` (the buffer size before INIT).
    pub fn max_write(&self) -> u32 {
        self.session
            .map(|s| s.init.max_write)
            .filter(|&w| w > 0)
            .unwrap_or(self.opts.max_io)
            .min(self.opts.max_io)
    }

    /// FUSE_LOOKUP of `name` in `parent`. A negative entry (node id 0) is
    /// reported as ENOENT, as the kernel treats it.
    pub fn lookup(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Result<EntryOut> {
        let e: EntryOut = self.call_struct(&Request::lookup(parent, name.as_ref())?)?;
        if e.nodeid == 0 {
            return Err(FsError::Errno {
                op: "LOOKUP",
                errno: libc::ENOENT,
            });
        }
        Ok(e)
    }

    /// FUSE_FORGET of `nlookup` references to `nodeid`, on the
    /// high-priority queue. It has no reply; the chain comes back later
    /// (see [`FsClient::wait_forgets`]).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        let req = Request::new("FORGET", Opcode::Forget, nodeid).arg(&ForgetIn { nlookup });
        self.send_no_reply(&req)
    }

    /// FUSE_GETATTR, through `fh` if given.
    pub fn getattr(&mut self, nodeid: u64, fh: Option<u64>) -> Result<AttrOut> {
        self.call_struct(&Request::getattr(nodeid, fh))
    }

    /// FUSE_SETATTR.
    pub fn setattr(&mut self, nodeid: u64, attr: &SetAttr) -> Result<AttrOut> {
        self.call_struct(&Request::new("SETATTR", Opcode::Setattr, nodeid).arg(&attr.to_wire()))
    }

    /// FUSE_OPEN with `open(2)` flags.
    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<OpenOut> {
        let arg = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call_struct(&Request::new("OPEN", Opcode::Open, nodeid).arg(&arg))
    }

    /// FUSE_OPENDIR.
    pub fn opendir(&mut self, nodeid: u64) -> Result<OpenOut> {
        let arg = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        self.call_struct(&Request::new("OPENDIR", Opcode::Opendir, nodeid).arg(&arg))
    }

    /// FUSE_CREATE of `name` in `parent` (umask 0): the new entry and its open handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        mode: u32,
        flags: i32,
    ) -> Result<(EntryOut, OpenOut)> {
        self.call_create(&Request::create(parent, name.as_ref(), mode, flags)?)
    }

    /// FUSE_MKDIR of `name` in `parent` (umask 0).
    pub fn mkdir(&mut self, parent: u64, name: impl AsRef<[u8]>, mode: u32) -> Result<EntryOut> {
        self.mkdir_umask(parent, name, mode, 0)
    }

    /// FUSE_UNLINK.
    pub fn unlink(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Result<()> {
        self.call_empty(&Request::new("UNLINK", Opcode::Unlink, parent).name(name.as_ref())?)
    }

    /// FUSE_RMDIR.
    pub fn rmdir(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Result<()> {
        self.call_empty(&Request::new("RMDIR", Opcode::Rmdir, parent).name(name.as_ref())?)
    }

    /// FUSE_RENAME of `parent/name` to `newparent/newname`.
    pub fn rename(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        newparent: u64,
        newname: impl AsRef<[u8]>,
    ) -> Result<()> {
        let req = Request::new("RENAME", Opcode::Rename, parent)
            .arg(&RenameIn { newdir: newparent })
            .name(name.as_ref())?
            .name(newname.as_ref())?;
        self.call_empty(&req)
    }

    /// FUSE_READ of up to `len` bytes at `offset`, leaving the data in the
    /// preallocated reply buffer (see [`FsClient::read_data`],
    /// [`FsClient::read_buf_addr`]). Returns the bytes read.
    pub fn read_into(&mut self, fh: u64, nodeid: u64, offset: u64, len: u32) -> Result<u32> {
        let req = Request::read(fh, nodeid, offset, len);
        let n = self.call_in_place(&req, 0, len)?;
        Ok(n)
    }

    /// FUSE_READ into a new vector.
    pub fn read(&mut self, fh: u64, nodeid: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let n = self.read_into(fh, nodeid, offset, len)?;
        self.read_data(n)
    }

    /// FUSE_WRITE of the first `len` bytes already in the write buffer
    /// (see [`FsClient::fill_write_buf`]). Returns the bytes written.
    pub fn write_from(&mut self, fh: u64, nodeid: u64, offset: u64, len: u32) -> Result<u32> {
        let arg = WriteIn {
            fh,
            offset,
            size: len,
            ..Default::default()
        };
        let req = Request::new("WRITE", Opcode::Write, nodeid).arg(&arg);
        let body = self.call(&req, len, size_of::<WriteOut>())?;
        let out: WriteOut = body_struct("WRITE", &body)?;
        Ok(out.size)
    }

    /// FUSE_WRITE of `data` at `offset`. Returns the bytes written.
    pub fn write(&mut self, fh: u64, nodeid: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.fill_write_buf(data)?;
        self.write_from(fh, nodeid, offset, data.len() as u32)
    }

    /// FUSE_READDIR: one batch of up to `size` bytes of entries from `offset`.
    pub fn readdir(
        &mut self,
        fh: u64,
        nodeid: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>> {
        let req = self.dir_request("READDIR", Opcode::Readdir, fh, nodeid, offset, size);
        let body = self.call(&req, 0, size)?;
        wire::parse_dirents(&body).map_err(|reason| FsError::BadReply {
            op: "READDIR",
            reason,
        })
    }

    /// FUSE_READDIRPLUS: one batch of up to `size` bytes of entries from `offset`.
    /// Every entry with a non-zero node id counts as a lookup.
    pub fn readdirplus(
        &mut self,
        fh: u64,
        nodeid: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntryPlus>> {
        let req = self.dir_request("READDIRPLUS", Opcode::Readdirplus, fh, nodeid, offset, size);
        let body = self.call(&req, 0, size)?;
        wire::parse_direntplus(&body).map_err(|reason| FsError::BadReply {
            op: "READDIRPLUS",
            reason,
        })
    }

    fn dir_request(
        &self,
        op: &'static str,
        opcode: Opcode,
        fh: u64,
        nodeid: u64,
        offset: u64,
        size: u32,
    ) -> Request {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        Request::new(op, opcode, nodeid).arg(&arg)
    }

    /// OPENDIR, READDIRPLUS until the end, RELEASEDIR: every entry of a directory.
    pub fn list_dir(&mut self, nodeid: u64) -> Result<Vec<DirEntryPlus>> {
        let fh = self.opendir(nodeid)?.fh;
        let mut all = Vec::new();
        let mut offset = 0;
        let result = loop {
            match self.readdirplus(fh, nodeid, offset, LIST_DIR_CHUNK) {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => {
                    offset = batch.last().expect("not empty").dirent.off;
                    all.extend(batch);
                }
                Err(e) => break Err(e),
            }
        };
        let released = self.releasedir(fh, nodeid);
        result?;
        released?;
        Ok(all)
    }

    /// FUSE_RELEASE of a file handle.
    pub fn release(&mut self, fh: u64, nodeid: u64, flags: i32) -> Result<()> {
        self.call_empty(&Request::release(fh, nodeid, flags))
    }

    /// FUSE_RELEASEDIR of a directory handle.
    pub fn releasedir(&mut self, fh: u64, nodeid: u64) -> Result<()> {
        let arg = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call_empty(&Request::new("RELEASEDIR", Opcode::Releasedir, nodeid).arg(&arg))
    }

    /// FUSE_FLUSH (what `close(2)` sends before RELEASE).
    pub fn flush(&mut self, fh: u64, nodeid: u64) -> Result<()> {
        let arg = FlushIn {
            fh,
            ..Default::default()
        };
        self.call_empty(&Request::new("FLUSH", Opcode::Flush, nodeid).arg(&arg))
    }

    /// FUSE_FSYNC (fdatasync if `datasync`).
    pub fn fsync(&mut self, fh: u64, nodeid: u64, datasync: bool) -> Result<()> {
        let arg = FsyncIn {
            fh,
            fsync_flags: if datasync { FSYNC_FDATASYNC } else { 0 },
            padding: 0,
        };
        self.call_empty(&Request::new("FSYNC", Opcode::Fsync, nodeid).arg(&arg))
    }

    /// FUSE_STATFS.
    pub fn statfs(&mut self, nodeid: u64) -> Result<Kstatfs> {
        let out: StatfsOut = self.call_struct(&Request::new("STATFS", Opcode::Statfs, nodeid))?;
        Ok(out.st)
    }
}

// ---- Links, special files, extended attributes, FALLOCATE, LSEEK, ACCESS ----

/// Reply room for READLINK (Linux's PATH_MAX).
const READLINK_MAX: u32 = 4096;

impl FsClient {
    /// The identity (`uid`, `gid`, `pid`) put in the headers of the next
    /// requests, as a guest process's would be.
    pub fn set_creds(&mut self, creds: Creds) {
        self.opts.creds = creds;
    }

    /// FUSE_SYMLINK: creates `parent/name` pointing at `target`.
    pub fn symlink(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<EntryOut> {
        let req = Request::new("SYMLINK", Opcode::Symlink, parent)
            .name(name.as_ref())?
            .name(target.as_ref())?;
        self.call_struct(&req)
    }

    /// FUSE_READLINK: the target of a symlink node.
    pub fn readlink(&mut self, nodeid: u64) -> Result<Vec<u8>> {
        self.call(
            &Request::new("READLINK", Opcode::Readlink, nodeid),
            0,
            READLINK_MAX,
        )
    }

    /// FUSE_LINK: a new name `newparent/newname` for node `oldnode`.
    pub fn link(
        &mut self,
        oldnode: u64,
        newparent: u64,
        newname: impl AsRef<[u8]>,
    ) -> Result<EntryOut> {
        let arg = LinkIn { oldnodeid: oldnode };
        self.call_new_entry("LINK", Opcode::Link, newparent, &arg, newname.as_ref())
    }

    /// FUSE_MKNOD of `parent/name` (umask 0); `mode` carries the type bits
    /// (`S_IFIFO`, `S_IFCHR`, ...), `rdev` the device number.
    pub fn mknod(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        mode: u32,
        rdev: u32,
    ) -> Result<EntryOut> {
        let arg = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call_new_entry("MKNOD", Opcode::Mknod, parent, &arg, name.as_ref())
    }

    /// FUSE_MKDIR with the caller's `umask` (what a kernel that
    /// negotiated DONT_MASK sends: the mode unmasked, the umask apart).
    pub fn mkdir_umask(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        mode: u32,
        umask: u32,
    ) -> Result<EntryOut> {
        let arg = MkdirIn { mode, umask };
        self.call_new_entry("MKDIR", Opcode::Mkdir, parent, &arg, name.as_ref())
    }

    /// FUSE_CREATE (O_CREAT|O_EXCL|O_RDWR) with the caller's `umask`; the
    /// new entry (its handle is released right away).
    pub fn create_umask(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        mode: u32,
        umask: u32,
    ) -> Result<EntryOut> {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
        let req = Request::create_umask(parent, name.as_ref(), mode, flags, umask)?;
        let (entry, open) = self.call_create(&req)?;
        self.release(open.fh, entry.nodeid, libc::O_RDWR)?;
        Ok(entry)
    }

    /// FUSE_SETXATTR of `name` = `value` with `setxattr(2)` flags
    /// (`XATTR_CREATE`, `XATTR_REPLACE` or 0).
    pub fn setxattr(
        &mut self,
        nodeid: u64,
        name: impl AsRef<[u8]>,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let size = u32::try_from(value.len()).map_err(|_| FsError::TooBig {
            op: "SETXATTR",
            len: value.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        let mut req = Request::new("SETXATTR", Opcode::Setxattr, nodeid)
            .arg(&SetxattrIn {
                size,
                flags: flags as u32,
            })
            .name(name.as_ref())?;
        req.args.extend_from_slice(value);
        self.call_empty(&req)
    }

    /// FUSE_GETXATTR with size 0: the size of the value of `name`.
    pub fn getxattr_size(&mut self, nodeid: u64, name: impl AsRef<[u8]>) -> Result<u32> {
        self.call_xattr_size(&Request::getxattr(nodeid, name.as_ref(), 0)?)
    }

    /// FUSE_GETXATTR: the value of `name`, in a buffer of `size` bytes
    /// (ERANGE if it does not fit).
    pub fn getxattr(&mut self, nodeid: u64, name: impl AsRef<[u8]>, size: u32) -> Result<Vec<u8>> {
        self.call(&Request::getxattr(nodeid, name.as_ref(), size)?, 0, size)
    }

    /// FUSE_LISTXATTR with size 0: bytes the NUL-separated list needs.
    pub fn listxattr_size(&mut self, nodeid: u64) -> Result<u32> {
        self.call_xattr_size(&Request::listxattr(nodeid, 0))
    }

    /// FUSE_LISTXATTR into a buffer of `size` bytes: the attribute names.
    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> Result<Vec<Vec<u8>>> {
        let body = self.call(&Request::listxattr(nodeid, size), 0, size)?;
        Ok(body
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// FUSE_REMOVEXATTR of `name`.
    pub fn removexattr(&mut self, nodeid: u64, name: impl AsRef<[u8]>) -> Result<()> {
        let req = Request::new("REMOVEXATTR", Opcode::Removexattr, nodeid).name(name.as_ref())?;
        self.call_empty(&req)
    }

    /// FUSE_FALLOCATE with `fallocate(2)` `mode` (0, `FALLOC_FL_KEEP_SIZE`,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`, ...).
    pub fn fallocate(
        &mut self,
        fh: u64,
        nodeid: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let arg = FallocateIn {
            fh,
            offset,
            length,
            mode: mode as u32,
            padding: 0,
        };
        self.call_empty(&Request::new("FALLOCATE", Opcode::Fallocate, nodeid).arg(&arg))
    }

    /// FUSE_LSEEK with `whence` (`SEEK_SET`, `SEEK_DATA`, `SEEK_HOLE`, ...):
    /// the resulting offset.
    pub fn lseek(&mut self, fh: u64, nodeid: u64, offset: u64, whence: i32) -> Result<u64> {
        let arg = LseekIn {
            fh,
            offset,
            whence: whence as u32,
            padding: 0,
        };
        let out: LseekOut =
            self.call_struct(&Request::new("LSEEK", Opcode::Lseek, nodeid).arg(&arg))?;
        Ok(out.offset)
    }

    /// FUSE_ACCESS with an `access(2)` mask (`R_OK | W_OK`, ...), checked
    /// with the request header's uid and gid.
    pub fn access(&mut self, nodeid: u64, mask: i32) -> Result<()> {
        let arg = AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        self.call_empty(&Request::new("ACCESS", Opcode::Access, nodeid).arg(&arg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setattr_sets_only_given_fields() {
        let s = SetAttr {
            size: Some(5),
            mode: Some(0o600),
            fh: Some(9),
            ..Default::default()
        }
        .to_wire();
        assert_eq!(s.valid, 0x8 | 0x1 | 0x40);
        assert_eq!((s.size, s.mode, s.fh), (5, 0o600, 9));
        assert_eq!(SetAttr::default().to_wire().valid, 0);
        let t = SetAttr {
            mtime: Some((7, 8)),
            uid: Some(3),
            ..Default::default()
        }
        .to_wire();
        assert_eq!(t.valid, 0x20 | 0x2);
        assert_eq!((t.mtime, t.mtimensec, t.uid), (7, 8, 3));
    }
}
