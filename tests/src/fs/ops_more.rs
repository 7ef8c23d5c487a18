//! The typed FUSE operations beyond the core set of `ops`: links and
//! special files (SYMLINK, READLINK, LINK, MKNOD), extended attributes
//! (SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR), FALLOCATE, LSEEK and
//! ACCESS.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, CreateIn, EntryOut, FallocateIn, GetxattrIn, GetxattrOut, LinkIn, LseekIn, LseekOut,
    MkdirIn, MknodIn, Opcode, OpenOut, SetxattrIn,
};

use super::wire::{body_struct, Request};
use super::{Creds, FsClient, FsError, Result};

/// Reply room for READLINK (Linux's PATH_MAX).
const READLINK_MAX: u32 = 4096;

impl FsClient {
    /// The identity (`uid`, `gid`, `pid`) put in the headers of the next
    /// requests, as a guest process's would be.
    pub fn set_creds(&mut self, creds: Creds) {
        self.opts.creds = creds;
    }

    /// Sends `req` and takes a fixed-size `T` out of the reply.
    fn call_typed<T: vm_memory::ByteValued + Default>(&mut self, req: &Request) -> Result<T> {
        let body = self.call(req, 0, std::mem::size_of::<T>() as u32)?;
        body_struct(req.op, &body)
    }

    /// Sends `req`, whose reply must have no body.
    fn call_no_body(&mut self, req: &Request) -> Result<()> {
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
        self.call_typed(&req)
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
        let req = Request::new("LINK", Opcode::Link, newparent)
            .arg(&LinkIn { oldnodeid: oldnode })
            .name(newname.as_ref())?;
        self.call_typed(&req)
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
        let req = Request::new("MKNOD", Opcode::Mknod, parent)
            .arg(&MknodIn {
                mode,
                rdev,
                umask: 0,
                padding: 0,
            })
            .name(name.as_ref())?;
        self.call_typed(&req)
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
        let req = Request::new("MKDIR", Opcode::Mkdir, parent)
            .arg(&MkdirIn { mode, umask })
            .name(name.as_ref())?;
        self.call_typed(&req)
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
        let arg = CreateIn {
            flags: (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) as u32,
            mode,
            umask,
            fuse_flags: 0,
        };
        let req = Request::new("CREATE", Opcode::Create, parent)
            .arg(&arg)
            .name(name.as_ref())?;
        let body = self.call(
            &req,
            0,
            (size_of::<EntryOut>() + size_of::<OpenOut>()) as u32,
        )?;
        let entry: EntryOut = body_struct("CREATE", &body)?;
        let open: OpenOut = body_struct("CREATE", &body[body.len().min(size_of::<EntryOut>())..])?;
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
        self.call_no_body(&req)
    }

    /// FUSE_GETXATTR with size 0: the size of the value of `name`.
    pub fn getxattr_size(&mut self, nodeid: u64, name: impl AsRef<[u8]>) -> Result<u32> {
        let req = Request::new("GETXATTR", Opcode::Getxattr, nodeid)
            .arg(&GetxattrIn {
                size: 0,
                padding: 0,
            })
            .name(name.as_ref())?;
        let out: GetxattrOut = self.call_typed(&req)?;
        Ok(out.size)
    }

    /// FUSE_GETXATTR: the value of `name`, in a buffer of `size` bytes
    /// (ERANGE if it does not fit).
    pub fn getxattr(&mut self, nodeid: u64, name: impl AsRef<[u8]>, size: u32) -> Result<Vec<u8>> {
        let req = Request::new("GETXATTR", Opcode::Getxattr, nodeid)
            .arg(&GetxattrIn { size, padding: 0 })
            .name(name.as_ref())?;
        self.call(&req, 0, size)
    }

    /// FUSE_LISTXATTR with size 0: bytes the NUL-separated list needs.
    pub fn listxattr_size(&mut self, nodeid: u64) -> Result<u32> {
        let req = Request::new("LISTXATTR", Opcode::Listxattr, nodeid).arg(&GetxattrIn {
            size: 0,
            padding: 0,
        });
        let out: GetxattrOut = self.call_typed(&req)?;
        Ok(out.size)
    }

    /// FUSE_LISTXATTR into a buffer of `size` bytes: the attribute names.
    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> Result<Vec<Vec<u8>>> {
        let req = Request::new("LISTXATTR", Opcode::Listxattr, nodeid)
            .arg(&GetxattrIn { size, padding: 0 });
        let body = self.call(&req, 0, size)?;
        Ok(body
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// FUSE_REMOVEXATTR of `name`.
    pub fn removexattr(&mut self, nodeid: u64, name: impl AsRef<[u8]>) -> Result<()> {
        let req = Request::new("REMOVEXATTR", Opcode::Removexattr, nodeid).name(name.as_ref())?;
        self.call_no_body(&req)
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
        self.call_no_body(&Request::new("FALLOCATE", Opcode::Fallocate, nodeid).arg(&arg))
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
            self.call_typed(&Request::new("LSEEK", Opcode::Lseek, nodeid).arg(&arg))?;
        Ok(out.offset)
    }

    /// FUSE_ACCESS with an `access(2)` mask (`R_OK | W_OK`, ...), checked
    /// with the request header's uid and gid.
    pub fn access(&mut self, nodeid: u64, mask: i32) -> Result<()> {
        let arg = AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        self.call_no_body(&Request::new("ACCESS", Opcode::Access, nodeid).arg(&arg))
    }
}
