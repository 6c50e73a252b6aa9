"""Bootstrap for `peftbench.sandbox`: installs the audit hook, then runs the untrusted program.

Run as `python -I -S _sandbox_boot.py WORKDIR main|call`; it imports nothing from peftbench, so
the program sees only the standard library.
"""

import json
import os
import sys

WORKDIR = os.path.realpath(sys.argv[1])
MODE = sys.argv[2]
ALLOWED_READ = tuple(
    os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, WORKDIR}
) + ("/dev/null", "/dev/urandom", "/proc/self")
BLOCKED = {
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.startfile",
}
MODIFYING = {
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move",
}
BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "socket", "_socket", "pty"}


def _inside(path, roots):
    if isinstance(path, int):
        return True  # an already-open descriptor
    real = os.path.realpath(os.fsdecode(path))
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in BLOCKED_IMPORTS:
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event == "open":
        path, mode = args[0], args[1] or "r"
        flags = args[2] if isinstance(args[2], int) else 0
        writing = any(c in str(mode) for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR))
        if not _inside(path, (WORKDIR,) if writing else ALLOWED_READ):
            raise PermissionError(f"sandbox: access to {path!r} is not allowed")
    elif event in MODIFYING:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path, (WORKDIR,)):
                raise PermissionError(f"sandbox: {event} outside the working directory")


def main():
    with open(os.path.join(WORKDIR, "program.py"), encoding="utf-8") as fh:
        source = fh.read()
    call = None
    if MODE == "call":
        with open(os.path.join(WORKDIR, "call.json"), encoding="utf-8") as fh:
            call = json.load(fh)
    sys.addaudithook(_hook)
    code = compile(source, "program.py", "exec")
    if call is None:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        return
    namespace = {"__name__": "program", "__builtins__": __builtins__}
    exec(code, namespace)
    fn_name = call["fn_name"]
    fn = namespace.get(fn_name)
    if fn is None and "Solution" in namespace:  # LeetCode-style starter code
        fn = getattr(namespace["Solution"](), fn_name)
    args = call["args"] if isinstance(call["args"], list) else [call["args"]]
    print(json.dumps(fn(*args)))


main()
