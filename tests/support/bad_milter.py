#!/usr/bin/env python3
"""A milter that misbehaves, for tests/milter.rs: it speaks the milter protocol
correctly up to one point, then does what MODE says.

Usage: bad_milter.py PORT MODE
  garbage   answers MAIL with bytes that are no packet
  slow      never answers the end of the message (the connection stays open)
  close     closes the connection at the first body chunk
  bigbody   answers the end of the message with a 100 MB body replacement
"""

import socket
import struct
import sys
import threading

PORT, MODE = int(sys.argv[1]), sys.argv[2]


def packet(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def read_packet(conn):
    head = b""
    while len(head) < 4:
        got = conn.recv(4 - len(head))
        if not got:
            return None, None
        head += got
    (length,) = struct.unpack(">I", head)
    data = b""
    while len(data) < length:
        got = conn.recv(length - len(data))
        if not got:
            return None, None
        data += got
    return data[:1], data[1:]


def serve(conn):
    with conn:
        while True:
            cmd, data = read_packet(conn)
            if cmd is None or cmd == b"Q":
                return
            if cmd == b"O":
                # Version 6, every action, every step.
                conn.sendall(packet(b"O", struct.pack(">III", 6, 0x1FF, 0)))
            elif cmd in (b"D", b"A"):
                continue
            elif cmd == b"M" and MODE == "garbage":
                conn.sendall(b"\xff\xff\xff\xffnot a milter packet")
            elif cmd == b"B" and MODE == "close":
                return
            elif cmd == b"E" and MODE == "slow":
                threading.Event().wait(3600)
            elif cmd == b"E" and MODE == "bigbody":
                chunk = (b"x" * 998 + b"\r\n") * 65
                sent = 0
                try:
                    while sent < 100 * 1024 * 1024:
                        conn.sendall(packet(b"b", chunk))
                        sent += len(chunk)
                    conn.sendall(packet(b"c"))
                except OSError:
                    return
            else:
                conn.sendall(packet(b"c"))


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", PORT))
    server.listen(16)
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
