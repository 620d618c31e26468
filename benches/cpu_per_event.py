"""CPU per accepted notification, from /proc (used by benches/*.sh).

    python3 benches/cpu_per_event.py PID ACCEPTED [DB_TICKS]

Sums the user and system time of every thread of process PID by thread
name (numbers stripped), divides by ACCEPTED, and prints microseconds per
notification, in all and by kind of thread. With DB_TICKS (clock ticks the
database's processes used meanwhile) it prints the database's share too.
"""
import collections
import os
import sys

pid, accepted = sys.argv[1], int(sys.argv[2])
db = int(sys.argv[3]) if len(sys.argv) > 3 else None
tick = os.sysconf('SC_CLK_TCK')
groups = collections.Counter()
for tid in os.listdir(f'/proc/{pid}/task'):
    stat = open(f'/proc/{pid}/task/{tid}/stat').read()
    name = stat[stat.index('(') + 1:stat.rindex(')')].rstrip('0123456789-')
    fields = stat[stat.rindex(')') + 2:].split()
    groups[name] += (int(fields[11]) + int(fields[12])) / tick
total = sum(groups.values())
parts = ", ".join(f"{k} {v / accepted * 1e6:.0f}" for k, v in groups.most_common() if v / accepted * 1e6 >= 1)
if db is None:
    print(f"server CPU per accepted notification: {total / accepted * 1e6:.0f} us ({parts})")
else:
    print(f"CPU per accepted notification, stored and processed: database {db / tick / accepted * 1e6:.0f} us, "
          f"service {total / accepted * 1e6:.0f} us ({parts})")
