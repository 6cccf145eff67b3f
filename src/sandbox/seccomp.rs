//! The seccomp deny list every job runs under: system calls that could leave or widen the sandbox
//! (namespaces, mounts, tracing, kernel keyrings, BPF, io_uring, module and kexec loading, file
//! handles) fail with EPERM, and so do the ones that would let two phases talk or read the page
//! cache's state: SysV IPC and POSIX message queues (a job has its own IPC namespace as well),
//! `mincore`, `cachestat` and reads with `RWF_NOWAIT`. `clone3` fails with ENOSYS (its flags sit in memory a filter cannot
//! read), so libc falls back to `clone`, whose namespace flags are checked.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// Denied outright.
const DENIED: &[i64] = &[
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    // SysV IPC and POSIX message queues: nothing the trainer, the compiler or libtorch needs.
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmdt,
    libc::SYS_shmctl,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
    // Page-cache residency oracles (an embed phase could read what the other one left there).
    libc::SYS_mincore,
    SYS_CACHESTAT,
];

/// `cachestat(2)` (Linux 6.5), the same number on every architecture; not in every libc crate yet.
const SYS_CACHESTAT: i64 = 451;

/// `RWF_NOWAIT`: a read that fails instead of waiting for the disk tells whether pages are cached.
const RWF_NOWAIT: u64 = 0x8;

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

/// The two programs to install, in order (compiled before fork; installing allocates nothing).
pub fn programs() -> Result<Vec<BpfProgram>> {
    let arch = std::env::consts::ARCH.try_into().context("seccomp: unsupported architecture")?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, vec![])).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&f| {
            SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(f), f)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    // preadv2/pwritev2(fd, iov, iovcnt, pos_l, pos_h, flags): the flags are the sixth argument.
    for nr in [libc::SYS_preadv2, libc::SYS_pwritev2] {
        let nowait = SeccompCondition::new(5, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(RWF_NOWAIT), RWF_NOWAIT)?;
        rules.insert(nr, vec![SeccompRule::new(vec![nowait])?]);
    }
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![deny.try_into()?, clone3.try_into()?])
}

/// Installs the programs on the calling thread (no_new_privs must be set).
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).context("install seccomp filter")?;
    }
    Ok(())
}
