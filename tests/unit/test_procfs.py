import os
import socket
import sys

from otelbpf.enrich import procfs


def test_this_process_executable_and_directory():
    assert procfs.executable(os.getpid()) == os.path.realpath(sys.executable)
    assert procfs.executable_name(os.getpid()) == os.path.basename(os.path.realpath(sys.executable))
    assert procfs.working_directory(os.getpid()) == os.getcwd()


def test_a_gone_process_is_named_by_the_kernel_command_name_or_unknown():
    gone = 2**22 + 1  # above pid_max's default range: no such process
    assert procfs.executable(gone) is None and procfs.working_directory(gone) is None
    assert procfs.executable_name(gone, b"nginx\0\0\0") == "nginx"
    assert procfs.executable_name(gone) == "unknown"
    assert procfs.executable_name(0, "kworker") == "kworker"  # pid 0: never read from /proc


def test_socket_inodes_are_this_process_open_sockets():
    with socket.socket() as s:
        inode = os.fstat(s.fileno()).st_ino
        assert inode in procfs.socket_inodes(os.getpid())
        assert procfs.fd_target(os.getpid(), s.fileno()) == f"socket:[{inode}]"
    assert inode not in procfs.socket_inodes(os.getpid())
