#!/usr/bin/env python3
"""Traffic for the demo's pods (run inside a pod's network namespace).

  pod_traffic.py tcp-server NAME PORT      answer each connection with NAME, echo the rest
  pod_traffic.py udp-server NAME PORT      answer each datagram with NAME: <datagram>
  pod_traffic.py tcp-hello ADDR PORT N     N connections; print who answered each
  pod_traffic.py udp-hello ADDR PORT N     N datagrams from N source ports; print who answered
  pod_traffic.py bulk ADDR PORT BYTES      send BYTES random bytes, check the echo is identical
  pod_traffic.py whoami-server PORT        answer each connection with the address it came from
"""
import os, socket, sys, threading, time
from collections import Counter


def tcp_server(name, port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)

    def serve(conn):
        with conn:
            conn.sendall(name.encode() + b"\n")
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def whoami_server(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    while True:
        conn, peer = listener.accept()
        with conn:
            conn.sendall(f"outside host saw {peer[0]}\n".encode())


def udp_server(name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(name.encode() + b": " + data, peer)


def tcp_hello(addr, port, n):
    seen = Counter()
    for _ in range(n):
        with socket.create_connection((addr, port), timeout=5) as c:
            seen[c.makefile().readline().strip()] += 1
    print(f"  {n} TCP connections to {addr}:{port} answered by: " + ", ".join(f"{k} x{v}" for k, v in sorted(seen.items())))


def udp_hello(addr, port, n):
    seen = Counter()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"ping %d" % i, (addr, port))
        try:
            seen[s.recv(2048).split(b":")[0].decode()] += 1
        except socket.timeout:
            seen["(no answer)"] += 1
        s.close()
    print(f"  {n} UDP datagrams to {addr}:{port} answered by: " + ", ".join(f"{k} x{v}" for k, v in sorted(seen.items())))


def bulk(addr, port, size):
    data = os.urandom(size)
    c = socket.create_connection((addr, port), timeout=10)
    c.makefile().readline()  # the server's name
    got = bytearray()
    start = time.time()

    def reader():
        while len(got) < size:
            chunk = c.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    c.sendall(data)
    t.join()
    c.close()
    ok = bytes(got) == data
    print(f"  {size} random bytes to {addr}:{port} and back in {time.time() - start:.2f}s: "
          + ("byte-identical" if ok else f"DIFFERENT ({len(got)} bytes back)"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "tcp-server": tcp_server(args[0], int(args[1]))
    elif mode == "udp-server": udp_server(args[0], int(args[1]))
    elif mode == "tcp-hello": tcp_hello(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-hello": udp_hello(args[0], int(args[1]), int(args[2]))
    elif mode == "bulk": bulk(args[0], int(args[1]), int(args[2]))
    elif mode == "whoami-server": whoami_server(int(args[0]))
    else: sys.exit(__doc__)
