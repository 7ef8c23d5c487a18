//! Node ids and file handles that survive a restart: the guest sees ids
//! this layer gives out, never the passthrough's (which a new process
//! numbers afresh). Each id is a record in [`crate::state`]'s table, and,
//! once used in this process, a mapping to the passthrough's inode or
//! handle. After a restart the table comes from `--state-file` and the
//! mappings are rebuilt lazily: a node by looking its name up again under
//! its parent (which must give the same device and inode number), a handle
//! by opening its node again with its flags. A node that has no name any
//! more (unlinked or replaced while open, or renamed by someone else while
//! the daemon was down) answers ESTALE, and so do its handles.

#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};

use crate::state::{Record, StateFile, Table, ROOT};

/// Longest chain of ancestors found again at once (a loop in a damaged
/// file ends here).
const MAX_DEPTH: usize = 1 << 16;
/// RENAME_EXCHANGE (linux/fs.h).
const RENAME_EXCHANGE: u32 = 2;

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// What this process knows beyond the table.
#[derive(Default)]
struct Live {
    table: Table,
    /// Guest node -> (passthrough inode, lookups this process did on it).
    inner_node: HashMap<u64, (u64, u64)>,
    /// Passthrough inode -> guest node.
    by_inner: HashMap<u64, u64>,
    /// (parent, name) -> guest node.
    by_name: HashMap<(u64, Vec<u8>), u64>,
    /// Guest handle -> passthrough handle.
    inner_fh: HashMap<u64, u64>,
    file: Option<StateFile>,
    /// The session came from the state file and the guest has sent no
    /// INIT since.
    resumed: bool,
}

impl Live {
    /// `parent/name` is gone: the node it named (if known) has no name.
    fn detach_name(&mut self, parent: u64, name: &CStr) {
        if let Some(g) = self.by_name.get(&(parent, name.to_bytes().to_vec())) {
            self.detach(*g);
        }
    }

    /// Applies `records` and appends them to the state file.
    fn commit(&mut self, records: &[Record]) {
        for r in records {
            self.table.apply(r);
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let done = f
            .append(records)
            .and_then(|()| f.maybe_compact(&self.table));
        if let Err(e) = done {
            // A file that no longer follows the session must not be
            // resumed from: empty it and stop writing.
            log::error!("{e}; the FUSE session will not survive a restart");
            let _ = f.rewrite(&Table::new());
            self.file = None;
        }
    }

    /// Node `g`'s name no longer leads to it.
    fn detach(&mut self, g: u64) {
        if let Some(n) = self.table.nodes.get(&g) {
            let key = (n.parent, n.name.clone());
            if self.by_name.get(&key) == Some(&g) {
                self.by_name.remove(&key);
            }
            self.commit(&[Record::Detach(g)]);
        }
    }

    /// Drops `count` of node `g`'s lookups. Returns the passthrough inode
    /// and how many lookups to forget there, when this was the last one.
    fn forget(&mut self, g: u64, count: u64) -> Option<(u64, u64)> {
        let key = {
            let n = self.table.nodes.get(&g)?;
            (n.parent, n.name.clone())
        };
        self.commit(&[Record::Forget(g, count)]);
        if self.table.nodes.contains_key(&g) {
            return None;
        }
        if self.by_name.get(&key) == Some(&g) {
            self.by_name.remove(&key);
        }
        let (x, refs) = self.inner_node.remove(&g)?;
        if self.by_inner.get(&x) == Some(&g) {
            self.by_inner.remove(&x);
        }
        Some((x, refs))
    }
}

/// The layer.
pub struct Persist<FS> {
    inner: FS,
    live: Mutex<Live>,
}

impl<FS: FileSystem<Inode = u64, Handle = u64>> Persist<FS> {
    /// Wraps `inner` with no state file: ids live as long as the process.
    pub fn new(inner: FS) -> Self {
        Persist {
            inner,
            live: Mutex::new(Live {
                table: Table::new(),
                ..Live::default()
            }),
        }
    }

    /// Wraps `inner`, resuming the session `file` holds (`table`, read
    /// by [`StateFile::load`]) and recording it there from now on.
    pub fn resume(inner: FS, file: StateFile, table: Table) -> io::Result<Self> {
        if let Some(opts) = table.init {
            inner.init(FsOptions::from_bits_truncate(opts))?;
            log::info!(
                "resuming the FUSE session of the state file: {} node(s), {} handle(s)",
                table.nodes.len(),
                table.handles.len()
            );
        }
        Ok(Persist {
            inner,
            live: Mutex::new(Live {
                resumed: table.init.is_some(),
                table,
                file: Some(file),
                ..Live::default()
            }),
        })
    }

    /// A FUSE session is on (INIT and no DESTROY since): true after a
    /// restart that resumed one.
    pub fn session_on(&self) -> bool {
        self.lock().table.init.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The passthrough inode of guest node `g`, found again if this
    /// process has not used it yet: its ancestors up to one this process
    /// knows (or the root) are looked up again from the top down, without
    /// recursion (a guest can make the chain deep).
    fn node(&self, ctx: &Context, g: u64) -> io::Result<u64> {
        let mut chain = Vec::new();
        let mut top = {
            let live = self.lock();
            let mut at = g;
            loop {
                if at == ROOT {
                    break ROOT;
                }
                if let Some(&(x, _)) = live.inner_node.get(&at) {
                    break x;
                }
                let Some(n) = live.table.nodes.get(&at) else {
                    // An ancestor the guest forgot while holding a child
                    // (it does not): the child cannot be found.
                    return Err(err(if at == g { libc::EBADF } else { libc::ESTALE }));
                };
                if n.detached || chain.len() >= MAX_DEPTH {
                    return Err(err(libc::ESTALE));
                }
                chain.push(at);
                at = n.parent;
            }
        };
        for &id in chain.iter().rev() {
            top = self.found_again(ctx, id, top)?;
        }
        Ok(top)
    }

    /// Looks node `g` up again under its parent's passthrough inode `px`.
    fn found_again(&self, ctx: &Context, g: u64, px: u64) -> io::Result<u64> {
        let (parent, name, dev, ino) = {
            let live = self.lock();
            if let Some(&(x, _)) = live.inner_node.get(&g) {
                return Ok(x);
            }
            let n = live.table.nodes.get(&g).ok_or_else(|| err(libc::ESTALE))?;
            (n.parent, n.name.clone(), n.dev, n.ino)
        };
        let cname = CString::new(name.clone()).map_err(|_| err(libc::ESTALE))?;
        let e = match self.inner.lookup(ctx, px, &cname) {
            Ok(e) if e.inode != 0 => e,
            Ok(_) => return Err(err(libc::ESTALE)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(err(libc::ESTALE)),
            Err(e) => return Err(e),
        };
        if (e.attr.st_dev, e.attr.st_ino) != (dev, ino) {
            self.inner.forget(ctx, e.inode, 1);
            log::info!("node {g}: another file took its name while the daemon was down");
            return Err(err(libc::ESTALE));
        }
        let mut live = self.lock();
        if let Some(&(x, _)) = live.inner_node.get(&g) {
            drop(live);
            self.inner.forget(ctx, e.inode, 1);
            return Ok(x);
        }
        if !live.table.nodes.contains_key(&g) {
            // Forgotten meanwhile.
            drop(live);
            self.inner.forget(ctx, e.inode, 1);
            return Err(err(libc::ESTALE));
        }
        live.inner_node.insert(g, (e.inode, 1));
        live.by_inner.insert(e.inode, g);
        live.by_name.insert((parent, name), g);
        Ok(e.inode)
    }

    /// Turns an entry the passthrough returned (one lookup on its inode)
    /// for `parent`/`name` into the guest's.
    fn learn(&self, parent: u64, name: &[u8], mut e: Entry) -> Entry {
        if e.inode == 0 || e.inode == ROOT {
            return e;
        }
        let x = e.inode;
        let mut live = self.lock();
        let live = &mut *live;
        let known = live.by_inner.get(&x).copied().or_else(|| {
            // A node of the table this process has not used yet.
            let g = *live.by_name.get(&(parent, name.to_vec()))?;
            let n = live.table.nodes.get(&g)?;
            let same = (n.dev, n.ino) == (e.attr.st_dev, e.attr.st_ino);
            (same && !live.inner_node.contains_key(&g)).then_some(g)
        });
        let g = match known {
            Some(g) => {
                live.commit(&[Record::Ref(g, 1)]);
                live.inner_node.entry(g).or_insert((x, 0)).1 += 1;
                live.by_inner.insert(x, g);
                g
            }
            None => {
                let g = live.table.next_node;
                live.commit(&[Record::Node {
                    id: g,
                    parent,
                    name: name.to_vec(),
                    dev: e.attr.st_dev,
                    ino: e.attr.st_ino,
                }]);
                live.inner_node.insert(g, (x, 1));
                live.by_inner.insert(x, g);
                live.by_name.insert((parent, name.to_vec()), g);
                g
            }
        };
        e.inode = g;
        e
    }

    /// Gives the guest a handle for passthrough handle `h` on node `g`.
    fn opened(&self, g: u64, h: Option<u64>, flags: u32, dir: bool) -> Option<u64> {
        let h = h?;
        let mut live = self.lock();
        let fh = live.table.next_fh;
        live.commit(&[Record::Open {
            fh,
            node: g,
            flags,
            dir,
        }]);
        live.inner_fh.insert(fh, h);
        Some(fh)
    }

    /// The passthrough handle of guest handle `fh`, opened again if this
    /// process has not used it yet.
    fn handle(&self, ctx: &Context, fh: u64) -> io::Result<u64> {
        let rec = {
            let live = self.lock();
            if let Some(&h) = live.inner_fh.get(&fh) {
                return Ok(h);
            }
            *live
                .table
                .handles
                .get(&fh)
                .ok_or_else(|| err(libc::EBADF))?
        };
        let x = self.node(ctx, rec.node)?;
        let flags = rec.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32);
        let h = if rec.dir {
            self.inner.opendir(ctx, x, flags)?.0
        } else {
            self.inner.open(ctx, x, flags, 0)?.0
        }
        .ok_or_else(|| err(libc::ESTALE))?;
        let mut live = self.lock();
        if let Some(&old) = live.inner_fh.get(&fh) {
            drop(live);
            self.close_inner(ctx, x, h, rec.dir);
            return Ok(old);
        }
        live.inner_fh.insert(fh, h);
        Ok(h)
    }

    fn close_inner(&self, ctx: &Context, x: u64, h: u64, dir: bool) {
        let _ = if dir {
            self.inner.releasedir(ctx, x, 0, h)
        } else {
            self.inner.release(ctx, x, 0, h, false, false, None)
        };
    }

    fn opt_handle(&self, ctx: &Context, fh: Option<u64>) -> io::Result<Option<u64>> {
        fh.map(|fh| self.handle(ctx, fh)).transpose()
    }

    /// RELEASE/RELEASEDIR: forgets guest handle `fh`; returns the
    /// passthrough handle to close, if this process opened one, and its
    /// node's passthrough inode (mapped here, since the handle was opened
    /// on it; else `inode`'s, found again).
    fn released(&self, ctx: &Context, fh: u64, inode: u64) -> io::Result<Option<(u64, u64)>> {
        let (h, x) = {
            let mut live = self.lock();
            let Some(rec) = live.table.handles.get(&fh).copied() else {
                return Err(err(libc::EBADF));
            };
            live.commit(&[Record::Release(fh)]);
            let Some(h) = live.inner_fh.remove(&fh) else {
                return Ok(None);
            };
            (h, live.inner_node.get(&rec.node).map(|m| m.0))
        };
        let x = match x {
            Some(x) => x,
            None => self.node(ctx, inode)?,
        };
        Ok(Some((h, x)))
    }

    fn forget_one(&self, ctx: &Context, g: u64, count: u64) {
        if g == ROOT {
            self.inner.forget(ctx, ROOT, count);
            return;
        }
        let last = self.lock().forget(g, count);
        if let Some((x, refs)) = last {
            if refs > 0 {
                self.inner.forget(ctx, x, refs);
            }
        }
    }
}

/// Writes the [`FileSystem`] methods that only translate ids: the guest's
/// node id (`inode`) and, where the method takes one, its handle
/// (`handle`) become the passthrough's; every other argument passes as it
/// came. `fn m(inode, a: A) -> R;` calls `inner.m(ctx, node, a)`,
/// `fn m(inode, handle, a: A) -> R;` calls `inner.m(ctx, node, handle, a)`
/// and `fn m(inode, a: A, handle) -> R;` calls `inner.m(ctx, node, a, handle)`.
macro_rules! forward {
    () => {};
    (fn $m:ident(inode, handle $(, $a:ident: $t:ty)*) -> $r:ty; $($rest:tt)*) => {
        fn $m(&self, ctx: &Context, inode: u64, handle: u64 $(, $a: $t)*) -> io::Result<$r> {
            let (x, h) = (self.node(ctx, inode)?, self.handle(ctx, handle)?);
            self.inner.$m(ctx, x, h $(, $a)*)
        }
        forward!($($rest)*);
    };
    (fn $m:ident(inode, $a:ident: $t:ty, handle) -> $r:ty; $($rest:tt)*) => {
        fn $m(&self, ctx: &Context, inode: u64, $a: $t, handle: u64) -> io::Result<$r> {
            let (x, h) = (self.node(ctx, inode)?, self.handle(ctx, handle)?);
            self.inner.$m(ctx, x, $a, h)
        }
        forward!($($rest)*);
    };
    (fn $m:ident(inode $(, $a:ident: $t:ty)*) -> $r:ty; $($rest:tt)*) => {
        fn $m(&self, ctx: &Context, inode: u64 $(, $a: $t)*) -> io::Result<$r> {
            self.inner.$m(ctx, self.node(ctx, inode)? $(, $a)*)
        }
        forward!($($rest)*);
    };
}

impl<FS: FileSystem<Inode = u64, Handle = u64>> FileSystem for Persist<FS> {
    type Inode = u64;
    type Handle = u64;

    forward! {
        fn readlink(inode) -> Vec<u8>;
        fn read(inode, handle, w: &mut dyn ZeroCopyWriter, size: u32, offset: u64,
            lock_owner: Option<u64>, flags: u32) -> usize;
        fn write(inode, handle, r: &mut dyn ZeroCopyReader, size: u32, offset: u64,
            lock_owner: Option<u64>, delayed_write: bool, flags: u32, fuse_flags: u32) -> usize;
        fn flush(inode, handle, lock_owner: u64) -> ();
        fn fsync(inode, datasync: bool, handle) -> ();
        fn fallocate(inode, handle, mode: u32, offset: u64, length: u64) -> ();
        fn statfs(inode) -> statvfs64;
        fn setxattr(inode, name: &CStr, value: &[u8], flags: u32) -> ();
        fn getxattr(inode, name: &CStr, size: u32) -> GetxattrReply;
        fn listxattr(inode, size: u32) -> ListxattrReply;
        fn removexattr(inode, name: &CStr) -> ();
        fn readdir(inode, handle, size: u32, offset: u64,
            add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> ();
        fn fsyncdir(inode, datasync: bool, handle) -> ();
        fn access(inode, mask: u32) -> ();
        fn lseek(inode, handle, offset: u64, whence: u32) -> u64;
        fn getlk(inode, handle, owner: u64, lock: FileLock, flags: u32) -> FileLock;
        fn setlk(inode, handle, owner: u64, lock: FileLock, flags: u32) -> ();
        fn setlkw(inode, handle, owner: u64, lock: FileLock, flags: u32) -> ();
        fn ioctl(inode, handle, flags: u32, cmd: u32, data: IoctlData,
            out_size: u32) -> IoctlData<'_>;
        fn bmap(inode, block: u64, blocksize: u32) -> u64;
        fn poll(inode, handle, khandle: u64, flags: u32, events: u32) -> u32;
    }

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let opts = self.inner.init(capable)?;
        let mut live = self.lock();
        if live.table.init.is_some() && !live.resumed {
            // A second INIT on this process's session keeps it, as the
            // passthrough does.
            live.commit(&[Record::Init(capable.bits())]);
            return Ok(opts);
        }
        // A new session: after a restart, INIT comes from a guest driver
        // that holds nothing of the old one.
        live.resumed = false;
        live.inner_node.clear();
        live.by_inner.clear();
        live.by_name.clear();
        live.inner_fh.clear();
        live.commit(&[Record::Destroy, Record::Init(capable.bits())]);
        Ok(opts)
    }

    fn destroy(&self) {
        {
            let mut live = self.lock();
            live.inner_node.clear();
            live.by_inner.clear();
            live.by_name.clear();
            live.inner_fh.clear();
            live.resumed = false;
            live.commit(&[Record::Destroy]);
            let live = &mut *live;
            if let Some(f) = live.file.as_mut() {
                if let Err(e) = f.rewrite(&live.table) {
                    log::warn!("{e}");
                }
            }
        }
        self.inner.destroy();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let px = self.node(ctx, parent)?;
        let e = self.inner.lookup(ctx, px, name)?;
        Ok(self.learn(parent, name.to_bytes(), e))
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.forget_one(ctx, inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (g, n) in requests {
            self.forget_one(ctx, g, n);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let x = self.node(ctx, inode)?;
        let h = self.opt_handle(ctx, handle)?;
        self.inner.getattr(ctx, x, h)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let x = self.node(ctx, inode)?;
        let h = self.opt_handle(ctx, handle)?;
        self.inner.setattr(ctx, x, attr, h, valid)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let e = self
            .inner
            .symlink(ctx, linkname, self.node(ctx, parent)?, name)?;
        Ok(self.learn(parent, name.to_bytes(), e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let e = self
            .inner
            .mknod(ctx, self.node(ctx, inode)?, name, mode, rdev, umask)?;
        Ok(self.learn(inode, name.to_bytes(), e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let e = self
            .inner
            .mkdir(ctx, self.node(ctx, parent)?, name, mode, umask)?;
        Ok(self.learn(parent, name.to_bytes(), e))
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, self.node(ctx, parent)?, name)?;
        self.lock().detach_name(parent, name);
        Ok(())
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, self.node(ctx, parent)?, name)?;
        self.lock().detach_name(parent, name);
        Ok(())
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let (ox, nx) = (self.node(ctx, olddir)?, self.node(ctx, newdir)?);
        self.inner.rename(ctx, ox, oldname, nx, newname, flags)?;
        let old = (olddir, oldname.to_bytes().to_vec());
        let new = (newdir, newname.to_bytes().to_vec());
        let mut live = self.lock();
        let moved = live.by_name.remove(&old);
        let other = live.by_name.remove(&new);
        let mut records = Vec::new();
        if let Some(g) = moved {
            records.push(Record::Move {
                id: g,
                parent: new.0,
                name: new.1.clone(),
            });
            live.by_name.insert(new, g);
        }
        if let Some(g) = other {
            if flags & RENAME_EXCHANGE != 0 {
                records.push(Record::Move {
                    id: g,
                    parent: old.0,
                    name: old.1.clone(),
                });
                live.by_name.insert(old, g);
            } else {
                records.push(Record::Detach(g));
            }
        }
        live.commit(&records);
        Ok(())
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let (x, px) = (self.node(ctx, inode)?, self.node(ctx, newparent)?);
        let e = self.inner.link(ctx, x, px, newname)?;
        Ok(self.learn(newparent, newname.to_bytes(), e))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (h, o, p) = self
            .inner
            .open(ctx, self.node(ctx, inode)?, flags, fuse_flags)?;
        Ok((self.opened(inode, h, flags, false), o, p))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let flags = args.flags;
        let (e, h, o, p) = self
            .inner
            .create(ctx, self.node(ctx, parent)?, name, args)?;
        let e = self.learn(parent, name.to_bytes(), e);
        Ok((e, self.opened(e.inode, h, flags, false), o, p))
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let Some((h, x)) = self.released(ctx, handle, inode)? else {
            // Opened by a process before a restart: nothing open here.
            return Ok(());
        };
        self.inner
            .release(ctx, x, flags, h, flush, flock_release, lock_owner)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (h, o) = self.inner.opendir(ctx, self.node(ctx, inode)?, flags)?;
        Ok((self.opened(inode, h, flags, true), o))
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let (x, h) = (self.node(ctx, inode)?, self.handle(ctx, handle)?);
        self.inner
            .readdirplus(ctx, x, h, size, offset, &mut |d, e| {
                let known = e.inode != 0 && e.inode != ROOT;
                let e = self.learn(inode, d.name, e);
                let r = add_entry(d, e);
                if known && matches!(r, Ok(0)) {
                    // Not sent: the passthrough forgets its own lookup.
                    let last = {
                        let mut live = self.lock();
                        if let Some(n) = live.inner_node.get_mut(&e.inode) {
                            n.1 = n.1.saturating_sub(1);
                        }
                        live.forget(e.inode, 1)
                    };
                    if let Some((x, refs)) = last.filter(|l| l.1 > 0) {
                        self.inner.forget(ctx, x, refs);
                    }
                }
                r
            })
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        let Some((h, x)) = self.released(ctx, handle, inode)? else {
            return Ok(());
        };
        self.inner.releasedir(ctx, x, flags, h)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::state::StateFile;

    /// (name, inode (0 before its first lookup), st_ino, lookups).
    type File = (Vec<u8>, u64, u64, u64);

    /// A filesystem of names under the root, each name one inode; a new
    /// process (a new `Names`) numbers them afresh from 100.
    struct Names {
        files: Mutex<Vec<File>>,
        next: Mutex<u64>,
        /// Open handles: handle -> (inode, flags)
        open: Mutex<HashMap<u64, (u64, u32)>>,
        inits: Mutex<Vec<u64>>,
    }

    impl Names {
        fn new(names: &[(&str, u64)], first: u64) -> Self {
            let files = names
                .iter()
                .map(|(n, ino)| (n.as_bytes().to_vec(), 0, *ino, 0))
                .collect();
            Names {
                files: Mutex::new(files),
                next: Mutex::new(first),
                open: Mutex::default(),
                inits: Mutex::default(),
            }
        }

        fn lookups(&self, name: &str) -> u64 {
            let f = self.files.lock().unwrap();
            f.iter().find(|f| f.0 == name.as_bytes()).map_or(0, |f| f.3)
        }
    }

    fn attr(ino: u64) -> stat64 {
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = ino;
        st.st_dev = 7;
        st
    }

    impl FileSystem for Names {
        type Inode = u64;
        type Handle = u64;

        fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
            self.inits.lock().unwrap().push(capable.bits());
            Ok(FsOptions::empty())
        }

        fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
            assert_eq!(parent, ROOT);
            let mut files = self.files.lock().unwrap();
            let f = files
                .iter_mut()
                .find(|f| f.0 == name.to_bytes())
                .ok_or_else(|| err(libc::ENOENT))?;
            if f.1 == 0 {
                let mut next = self.next.lock().unwrap();
                f.1 = *next;
                *next += 1;
            }
            f.3 += 1;
            Ok(Entry {
                inode: f.1,
                attr: attr(f.2),
                ..Entry::default()
            })
        }

        fn forget(&self, _: &Context, inode: u64, count: u64) {
            let mut files = self.files.lock().unwrap();
            let f = files
                .iter_mut()
                .find(|f| f.1 == inode)
                .expect("known inode");
            f.3 = f.3.checked_sub(count).expect("forgot more than looked up");
        }

        fn getattr(
            &self,
            _: &Context,
            inode: u64,
            _: Option<u64>,
        ) -> io::Result<(stat64, Duration)> {
            let files = self.files.lock().unwrap();
            let f = files
                .iter()
                .find(|f| f.1 == inode && f.3 > 0)
                .ok_or_else(|| err(libc::EBADF))?;
            Ok((attr(f.2), Duration::ZERO))
        }

        fn unlink(&self, _: &Context, _: u64, name: &CStr) -> io::Result<()> {
            let mut files = self.files.lock().unwrap();
            let f = files
                .iter_mut()
                .find(|f| f.0 == name.to_bytes())
                .ok_or_else(|| err(libc::ENOENT))?;
            f.0 = b"/gone".to_vec();
            Ok(())
        }

        fn open(
            &self,
            _: &Context,
            inode: u64,
            flags: u32,
            _: u32,
        ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
            let mut open = self.open.lock().unwrap();
            let h = 50 + open.len() as u64;
            open.insert(h, (inode, flags));
            Ok((Some(h), OpenOptions::empty(), None))
        }

        fn release(
            &self,
            _: &Context,
            inode: u64,
            _: u32,
            h: u64,
            _: bool,
            _: bool,
            _: Option<u64>,
        ) -> io::Result<()> {
            let was = self.open.lock().unwrap().remove(&h);
            assert_eq!(was.map(|w| w.0), Some(inode));
            Ok(())
        }
    }

    fn state_file(tag: &str) -> (std::path::PathBuf, std::fs::File) {
        crate::state::temp_state_file(&format!("persist-{tag}"))
    }

    fn files() -> Vec<(&'static str, u64)> {
        vec![("a", 1000), ("b", 1001), ("c", 1002)]
    }

    #[test]
    fn guest_ids_are_not_the_passthrough_ids_and_forget_reaches_it() {
        let fs = Persist::new(Names::new(&files(), 100));
        let ctx = Context::default();
        fs.init(FsOptions::empty()).unwrap();
        let a = fs.lookup(&ctx, ROOT, c"a").unwrap().inode;
        let a2 = fs.lookup(&ctx, ROOT, c"a").unwrap().inode;
        let b = fs.lookup(&ctx, ROOT, c"b").unwrap().inode;
        assert_eq!(a, a2, "one node id per inode");
        assert_ne!(a, b);
        assert!(a < 100 && b < 100, "guest ids {a} {b} are ours");
        assert_eq!(fs.getattr(&ctx, a, None).unwrap().0.st_ino, 1000);
        fs.init(FsOptions::empty()).unwrap();
        assert_eq!(
            fs.getattr(&ctx, a, None).unwrap().0.st_ino,
            1000,
            "a second INIT keeps the session"
        );
        fs.forget(&ctx, a, 1);
        assert_eq!(fs.inner.lookups("a"), 2, "still looked up once");
        fs.forget(&ctx, a, 1);
        assert_eq!(fs.inner.lookups("a"), 0, "both lookups forgotten");
        let e = fs.getattr(&ctx, a, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        fs.forget(&ctx, a, 1); // unknown: ignored
    }

    #[test]
    fn nodes_and_handles_are_found_again_after_a_restart() {
        let (path, file) = state_file("restart");
        let ctx = Context::default();
        let (sf, t) = StateFile::load(file.try_clone().unwrap()).unwrap();
        let fs = Persist::resume(Names::new(&files(), 100), sf, t).unwrap();
        assert!(!fs.session_on());
        fs.init(FsOptions::ASYNC_READ).unwrap();
        let a = fs.lookup(&ctx, ROOT, c"a").unwrap().inode;
        let b = fs.lookup(&ctx, ROOT, c"b").unwrap().inode;
        let c = fs.lookup(&ctx, ROOT, c"c").unwrap().inode;
        let flags = libc::O_RDWR as u32;
        let (fa, _, _) = fs.open(&ctx, a, flags, 0).unwrap();
        let fa = fa.unwrap();
        let (fc, _, _) = fs.open(&ctx, c, 0, 0).unwrap();
        let fc = fc.unwrap();
        drop(fs); // the kill: nothing closes

        // The new process numbers its inodes from 200; c is unlinked
        // while the daemon is down.
        let names = Names::new(&files(), 200);
        names.files.lock().unwrap()[2].0 = b"/gone".to_vec();
        let (sf, t) = StateFile::load(file).unwrap();
        let fs = Persist::resume(names, sf, t).unwrap();
        assert!(fs.session_on());
        assert_eq!(
            *fs.inner.inits.lock().unwrap(),
            vec![FsOptions::ASYNC_READ.bits()]
        );
        assert_eq!(fs.getattr(&ctx, b, None).unwrap().0.st_ino, 1001);
        assert_eq!(fs.getattr(&ctx, a, Some(fa)).unwrap().0.st_ino, 1000);
        let reopened: Vec<_> = fs.inner.open.lock().unwrap().values().copied().collect();
        assert_eq!(
            reopened,
            vec![(200 + 1, flags)],
            "a reopened with its flags"
        );
        let stale = fs.getattr(&ctx, c, None).unwrap_err();
        assert_eq!(stale.raw_os_error(), Some(libc::ESTALE));
        let stale = fs.getattr(&ctx, a, Some(fc)).unwrap_err();
        assert_eq!(stale.raw_os_error(), Some(libc::ESTALE), "c's handle");
        // RELEASE of a handle never reopened closes nothing; a reopened
        // one is closed in the passthrough.
        fs.release(&ctx, c, 0, fc, false, false, None).unwrap();
        fs.release(&ctx, a, 0, fa, false, false, None).unwrap();
        assert!(fs.inner.open.lock().unwrap().is_empty());
        let again = fs.release(&ctx, a, 0, fa, false, false, None).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EBADF));
        fs.forget(&ctx, a, 1);
        fs.forget(&ctx, b, 1);
        fs.forget(&ctx, c, 1);
        assert_eq!(fs.inner.lookups("a") + fs.inner.lookups("b"), 0);
        // A fresh INIT (a new guest driver) after the restart starts over.
        fs.init(FsOptions::empty()).unwrap();
        let reopened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (_, t) = StateFile::load(reopened).unwrap();
        assert!(t.nodes.is_empty() && t.handles.is_empty(), "{t:?}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn another_file_under_the_old_name_is_stale() {
        let (path, file) = state_file("renamed");
        let ctx = Context::default();
        let (sf, t) = StateFile::load(file.try_clone().unwrap()).unwrap();
        let fs = Persist::resume(Names::new(&files(), 100), sf, t).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let a = fs.lookup(&ctx, ROOT, c"a").unwrap().inode;
        drop(fs);
        // "a" is now another file (inode number 5000).
        let (sf, t) = StateFile::load(file).unwrap();
        let fs = Persist::resume(Names::new(&[("a", 5000)], 300), sf, t).unwrap();
        let e = fs.getattr(&ctx, a, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
        assert_eq!(
            fs.inner.lookups("a"),
            0,
            "the wrong file's lookup forgotten"
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// A damaged file whose nodes are each other's parents: ESTALE, no
    /// hang and no stack overflow.
    #[test]
    fn a_parent_loop_in_the_file_is_stale() {
        let (path, file) = state_file("loop");
        let mut t = Table::new();
        for r in [
            Record::Init(0),
            Record::Node {
                id: 2,
                parent: 3,
                name: b"a".to_vec(),
                dev: 7,
                ino: 1000,
            },
            Record::Node {
                id: 3,
                parent: 2,
                name: b"b".to_vec(),
                dev: 7,
                ino: 1001,
            },
        ] {
            t.apply(&r);
        }
        let (sf, _) = StateFile::load(file).unwrap();
        let fs = Persist::resume(Names::new(&files(), 100), sf, t).unwrap();
        let e = fs.getattr(&Context::default(), 2, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESTALE));
        std::fs::remove_file(&path).unwrap();
    }
}
