//! Files: the path of a `struct file` (a dentry walk that crosses mount points), the open
//! files of a process, the executable of a process.

use vmi_arch_amd64::Amd64;
use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::kmem::{Kmem, malformed};
use crate::offsets::PathOffsets;
use crate::{LinuxOs, LinuxTask};

/// Longest path component read (the kernel's `NAME_MAX` is 255).
const MAX_NAME: usize = 255;

/// An open file descriptor of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// The descriptor number.
    pub fd: u32,
    /// The `struct file`.
    pub file: Va,
    /// Its path (`pipe:[ino]`-style names for files outside any mounted tree).
    pub path: Result<String, String>,
}

impl LinuxOs {
    fn path_offsets(&self) -> Result<&PathOffsets, VmiError> {
        self.offsets
            .path
            .as_ref()
            .map_err(|e| crate::builder::os_error("file paths", e.clone()))
    }

    /// The path of the `struct file` at `file`.
    pub fn file_path<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        file: Va,
    ) -> Result<String, VmiError> {
        self.file_path_kmem(&self.kmem(core), file)
    }

    pub(crate) fn file_path_kmem<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        file: Va,
    ) -> Result<String, VmiError> {
        let o = self.path_offsets()?;
        self.path_of(k, o, file + o.f_path, None)
    }

    /// The path of the `struct file` at `file` as the process whose root is `root`
    /// (`task->fs->root`: mount, dentry) sees it, like `/proc/PID/fd` and `maps`.
    pub(crate) fn file_path_from<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        file: Va,
        root: Option<(Va, Va)>,
    ) -> Result<String, VmiError> {
        let o = self.path_offsets()?;
        self.path_of(k, o, file + o.f_path, root)
    }

    /// The root directory of a task (`task->fs->root` as `(vfsmount, dentry)`); `None`
    /// when the profile lacks the fields or the task has no `fs` (exiting, kernel thread).
    pub(crate) fn task_root<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        task: Va,
    ) -> Result<Option<(Va, Va)>, VmiError> {
        let o = self.path_offsets()?;
        let (Some(fs), Some(root)) = (o.task_fs, o.fs_root) else {
            return Ok(None);
        };
        let Some(fs) = k.opt_ptr(task + fs, "task_struct.fs")? else {
            return Ok(None);
        };
        let path = fs + root;
        Ok(Some((
            k.ptr(path + o.path_mnt, "path.mnt")?,
            k.ptr(path + o.path_dentry, "path.dentry")?,
        )))
    }

    /// The path of a `struct path` at `path`, as the kernel's `d_path` prints it: a
    /// pseudo file's `d_op->d_dname` name (`pipe:[ino]`, `socket:[ino]`,
    /// `anon_inode:[eventfd]`, `/memfd:NAME (deleted)`), else dentry names up to the root
    /// of its mount, then on from the mount point in the parent mount, until `root` or the
    /// root mount; ` (deleted)` appended for an unlinked file.
    fn path_of<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        o: &PathOffsets,
        path: Va,
        root: Option<(Va, Va)>,
    ) -> Result<String, VmiError> {
        let mut mnt = k.ptr(path + o.path_mnt, "path.mnt")?;
        let mut dentry = k.ptr(path + o.path_dentry, "path.dentry")?;
        let start = dentry;
        if let Some(name) = self.dname(k, o, mnt, dentry)? {
            return Ok(name);
        }
        let mut mount = mnt - o.mount_mnt;
        let mut names: Vec<String> = Vec::new();
        let mut total = 0usize;
        let mut complete = false;
        for _ in 0..self.limits.max_path_depth {
            if root == Some((mnt, dentry)) {
                complete = true;
                break;
            }
            let mnt_root = k.ptr(mnt + o.mnt_root, "vfsmount.mnt_root")?;
            let parent = k.ptr(dentry + o.d_parent, "dentry.d_parent")?;
            if dentry == mnt_root || parent == dentry {
                let up = k.ptr(mount + o.mnt_parent, "mount.mnt_parent")?;
                if dentry != mnt_root || up == mount {
                    if names.is_empty() && dentry != mnt_root {
                        // Not reachable from a mount's root: an internal file (pipe,
                        // socket, anonymous inode) of a kernel without `d_op` in the profile.
                        return self.pseudo_name(k, o, mnt, start);
                    }
                    complete = true;
                    break;
                }
                dentry = k.ptr(mount + o.mnt_mountpoint, "mount.mnt_mountpoint")?;
                mount = up;
                mnt = mount + o.mount_mnt;
                continue;
            }
            let name_ptr = k.bytes_ptr(dentry + o.d_name + o.qstr_name, "qstr.name")?;
            let len = k.u32(dentry + o.d_name + o.qstr_len)? as usize;
            if len > MAX_NAME {
                return Err(malformed("qstr.len", dentry.0, format!("{len} bytes")));
            }
            let bytes = k.vec(name_ptr, len)?;
            total += len + 1;
            if total > 4096 {
                return Err(malformed("dentry path", start.0, "longer than PATH_MAX"));
            }
            names.push(String::from_utf8_lossy(&bytes).into_owned());
            dentry = parent;
        }
        if !complete {
            return Err(VmiError::WalkLimit {
                what: "dentry.d_parent",
                count: names.len(),
                reason: "limit",
            });
        }
        let mut out = String::with_capacity(total + 11);
        for n in names.iter().rev() {
            out.push('/');
            out.push_str(n);
        }
        if out.is_empty() {
            out.push('/');
        }
        if self.unlinked(k, o, start)? {
            out.push_str(" (deleted)");
        }
        Ok(out)
    }

    /// `d_unlinked`: not a root dentry and not hashed (`d_hash.pprev == NULL`).
    fn unlinked<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        o: &PathOffsets,
        dentry: Va,
    ) -> Result<bool, VmiError> {
        let Some(pprev) = o.d_hash_pprev else {
            return Ok(false);
        };
        let parent = k.ptr(dentry + o.d_parent, "dentry.d_parent")?;
        Ok(parent != dentry && k.u64(dentry + pprev)? == 0)
    }

    /// The name the kernel's `d_path` gives a dentry whose `d_op->d_dname` is set (and
    /// that is not the root of its mount), by which function that is; `None` for a
    /// dentry named by the path walk.
    fn dname<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        o: &PathOffsets,
        mnt: Va,
        dentry: Va,
    ) -> Result<Option<String>, VmiError> {
        let (Some(d_op), Some(d_dname)) = (o.d_op, o.d_dname) else {
            return Ok(None);
        };
        let Some(ops) = k.opt_ptr(dentry + d_op, "dentry.d_op")? else {
            return Ok(None);
        };
        let func = k.u64(ops + d_dname)?;
        if func == 0 {
            return Ok(None);
        }
        let parent = k.ptr(dentry + o.d_parent, "dentry.d_parent")?;
        let mnt_root = k.ptr(mnt + o.mnt_root, "vfsmount.mnt_root")?;
        if parent == dentry && dentry == mnt_root {
            return Ok(None);
        }
        let own = || -> Result<String, VmiError> {
            let name_ptr = k.bytes_ptr(dentry + o.d_name + o.qstr_name, "qstr.name")?;
            let len = (k.u32(dentry + o.d_name + o.qstr_len)? as usize).min(MAX_NAME);
            Ok(String::from_utf8_lossy(&k.vec(name_ptr, len)?).into_owned())
        };
        let ino = || -> Result<u64, VmiError> {
            match (o.d_inode, o.i_ino) {
                (Some(d_inode), Some(i_ino)) => {
                    match k.opt_ptr(dentry + d_inode, "dentry.d_inode")? {
                        Some(inode) => k.u64(inode + i_ino),
                        None => Ok(0),
                    }
                }
                _ => Err(VmiError::not_supported(
                    "inode numbers (no dentry.d_inode or inode.i_ino in the profile)",
                    "linux",
                )),
            }
        };
        let function = self
            .profile
            .symbols
            .nearest(func)
            .filter(|(_, off)| *off == 0)
            .map(|(s, _)| s.name.as_str());
        Ok(Some(match function {
            Some("pipefs_dname") => format!("pipe:[{}]", ino()?),
            Some("sockfs_dname") => format!("socket:[{}]", ino()?),
            Some("anon_inodefs_dname") => format!("anon_inode:{}", own()?),
            Some("simple_dname") => format!("/{} (deleted)", own()?),
            // Other pseudo file systems (nsfs, dma-buf, ...): their type and inode.
            _ => return self.pseudo_name(k, o, mnt, dentry).map(Some),
        }))
    }

    /// `<fstype>:[<inode>]` for files on internal mounts (`pipe:[1234]`), or the dentry's
    /// own name (`anon_inode:[eventfd]`) when it has one.
    fn pseudo_name<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        o: &PathOffsets,
        mnt: Va,
        dentry: Va,
    ) -> Result<String, VmiError> {
        let name_ptr = k.bytes_ptr(dentry + o.d_name + o.qstr_name, "qstr.name")?;
        let len = (k.u32(dentry + o.d_name + o.qstr_len)? as usize).min(MAX_NAME);
        let own = String::from_utf8_lossy(&k.vec(name_ptr, len)?).into_owned();
        if own.contains(':') {
            return Ok(own);
        }
        let (Some(sb_off), Some(s_type), Some(fs_name), Some(d_inode), Some(i_ino)) =
            (o.mnt_sb, o.s_type, o.fs_name, o.d_inode, o.i_ino)
        else {
            return Ok(own);
        };
        let sb = k.ptr(mnt + sb_off, "vfsmount.mnt_sb")?;
        let ty = k.ptr(sb + s_type, "super_block.s_type")?;
        let name = k.bytes_ptr(ty + fs_name, "file_system_type.name")?;
        let fs = k.cstring(name, 64)?;
        let ino = match k.opt_ptr(dentry + d_inode, "dentry.d_inode")? {
            Some(inode) => k.u64(inode + i_ino)?,
            None => 0,
        };
        Ok(format!("{fs}:[{ino}]"))
    }

    /// The device (`s_dev` of the inode's super block, kernel `dev_t`) and inode number of
    /// the `struct file` at `file`, as `/proc/PID/maps` prints them.
    pub(crate) fn file_dev_ino<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        file: Va,
    ) -> Result<(u32, u64), VmiError> {
        let o = self.path_offsets()?;
        let (Some(f_inode), Some(i_sb), Some(s_dev), Some(i_ino)) =
            (o.f_inode, o.i_sb, o.s_dev, o.i_ino)
        else {
            return Err(VmiError::not_supported(
                "device and inode numbers (file.f_inode, inode.i_sb, super_block.s_dev or \
                 inode.i_ino missing in the profile)",
                "linux",
            ));
        };
        let inode = k.ptr(file + f_inode, "file.f_inode")?;
        let sb = k.ptr(inode + i_sb, "inode.i_sb")?;
        Ok((k.u32(sb + s_dev)?, k.u64(inode + i_ino)?))
    }

    /// The open files of a process (`files->fdt->fd[0..max_fds]`), by descriptor.
    pub fn open_files<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<Vec<OpenFile>, VmiError> {
        let o = self.path_offsets()?;
        let k = self.kmem(core);
        let Some(files) = k.opt_ptr(task.task + self.offsets.task.files, "task_struct.files")?
        else {
            return Ok(Vec::new());
        };
        let fdt = k.ptr(files + o.fdt, "files_struct.fdt")?;
        let max = k.u32(fdt + o.max_fds)? as usize;
        let max = max.min(self.limits.max_fds);
        let fd_array = k.ptr(fdt + o.fd, "fdtable.fd")?;
        let root = self.task_root(&k, task.task)?;
        let raw = k.vec(fd_array, max * 8)?;
        let mut out = Vec::new();
        for (fd, c) in raw.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            // The low bits of an fd entry are never set for a plain `struct file *`.
            let v = u64::from_le_bytes(b);
            if v == 0 {
                continue;
            }
            let file = match k.check_ptr(v, "fdtable.fd[]", fd_array + fd as u64 * 8) {
                Ok(f) => f,
                Err(e) => {
                    out.push(OpenFile {
                        fd: fd as u32,
                        file: Va(v),
                        path: Err(e.to_string()),
                    });
                    continue;
                }
            };
            out.push(OpenFile {
                fd: fd as u32,
                file,
                path: self
                    .file_path_from(&k, file, root)
                    .map_err(|e| e.to_string()),
            });
        }
        Ok(out)
    }

    /// The executable of a process (`mm->exe_file`), `None` for kernel threads.
    pub fn exe_path<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<Option<String>, VmiError> {
        let mo = self.mm_offsets()?;
        let (Some(mm), Some(exe)) = (task.mm, mo.exe_file) else {
            return Ok(None);
        };
        let k = self.kmem(core);
        let root = self.task_root(&k, task.task)?;
        match k.opt_ptr(mm + exe, "mm_struct.exe_file")? {
            Some(f) => self.file_path_from(&k, f, root).map(Some),
            None => Ok(None),
        }
    }
}
