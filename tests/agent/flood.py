"""A connection flood against one agent's API, for the lab's flood test (run as a separate
process so the test's own measurements are not slowed by it):

    flood.py HOST:PORT --idle N --slow M --seconds S

N clients send the first line and one header of a request and then nothing (a half-open
request); M clients send a request one byte per second. A client the server closes waits a
moment and comes back, so the pressure lasts; the whole flood is bounded in count (N + M
sockets at most) and time (S seconds). Prints one JSON line: connects, closes by the server,
connect errors. Lab addresses only: the test passes one it made.
"""

import argparse
import asyncio
import json
import random
import resource
import time

HALF_OPEN = b"GET /primary HTTP/1.1\r\nHost: flood\r\n"
SLOW = b"GET /primary HTTP/1.1\r\nHost: flood\r\nX-Slow: " + b"a" * 4000 + b"\r\n\r\n"


async def client(host, port, slow, until, stats):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, asyncio.TimeoutError):
            stats["connect_errors"] += 1
            await asyncio.sleep(random.uniform(0.5, 1.0))
            continue
        stats["connects"] += 1
        try:
            if slow:
                for i in range(len(SLOW)):
                    if time.monotonic() >= until:
                        break
                    writer.write(SLOW[i:i + 1])
                    await writer.drain()
                    # The server closing on us shows as EOF on a read.
                    try:
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            break
                    except asyncio.TimeoutError:
                        pass
            else:
                writer.write(HALF_OPEN)
                await writer.drain()
                left = until - time.monotonic()
                if left > 0:
                    try:
                        await asyncio.wait_for(reader.read(1024), left)
                    except asyncio.TimeoutError:
                        pass
            if time.monotonic() < until:
                stats["closed_by_server"] += 1
        except OSError:
            stats["closed_by_server"] += 1
        finally:
            writer.close()
        # An attacker comes back; not at once, or it is our own CPU it floods.
        await asyncio.sleep(random.uniform(0.2, 1.0))


async def main(args):
    host, port = args.target.rsplit(":", 1)
    until = time.monotonic() + args.seconds
    stats = {"connects": 0, "closed_by_server": 0, "connect_errors": 0}
    tasks = [client(host, int(port), False, until, stats) for _ in range(args.idle)]
    tasks += [client(host, int(port), True, until, stats) for _ in range(args.slow)]
    random.shuffle(tasks)
    await asyncio.gather(*tasks)
    return stats


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.idle + a.slow + 256)), hard))
    print(json.dumps(asyncio.run(main(a))))
