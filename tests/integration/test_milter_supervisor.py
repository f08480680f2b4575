"""The supervisor of mailmeta-milter restarts a filter process that dies,
and throttles one that keeps dying at start (mailmeta-milter(8)) instead of
restarting it every second forever; SIGTERM still ends it at once."""
import os
import re
import shutil
import signal
import subprocess
import time

from mmtest import write_milter_config


def test_a_filter_that_cannot_start_is_restarted_ever_more_slowly(stack):
    env = stack.env
    sd = env["STACK_DIR"]
    work = f"{sd}/milter-supervisor"
    shutil.rmtree(work, ignore_errors=True)
    # root only: the filter process, which runs as mailmeta, cannot make
    # its socket here
    locked = f"{work}/locked"
    os.makedirs(locked, mode=0o700)
    conf, pidfile = f"{work}/milter.conf", f"{work}/milter.pid"
    write_milter_config(stack, conf, f"{locked}/milter.sock", pidfile, f"{work}/journal")
    log_path = f"{work}/milter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([f"{env['MAILMETA_PREFIX']}/sbin/mailmeta-milter", "-f", "-c", conf],
                                stdout=log, stderr=log, start_new_session=True)
    try:
        time.sleep(9)
        with open(log_path) as f:
            text = f.read()
        delays = [int(d) for d in re.findall(r"ended unexpectedly \(exit status \d+\); "
                                             r"restarting in (\d+) s", text)]
        # 1 + 2 + 4 s fit in 9 s, 1 + 2 + 4 + 8 do not
        assert delays[:3] == [1, 2, 4], text
        assert len(delays) <= 4, text
        assert "cannot listen on" in text, text

        # waiting for the next restart, SIGTERM ends the supervisor at once
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - start < 3
        assert not os.path.exists(pidfile)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
