#!/usr/bin/python3
"""scapy's ESP as meshlane's independent peer (tests/dataplane/esp/esp_interop_test.cpp).

    scapy_esp.py MANIFEST.json

The manifest lists jobs over Ethernet frames in files:
  {"op": "decrypt", "key": HEX, "salt": HEX, "spi": N, "sequence": N, "in": PATH, "out": PATH}
      `in` is an ESP-in-UDP frame meshlane sent (transport mode, RFC 3948 port 4500,
      64-bit sequence number `sequence`, of which the frame carries the low half).
      Checks its outer headers, that the IV is the sequence number, that the ESP
      trailer is RFC 4303's (opened a second time with python3-cryptography's AESGCM),
      that the high half of the sequence number is authenticated (the wrong one fails),
      then writes the frame scapy's SecurityAssociation.decrypt gives back: Ethernet /
      IPv4 / the Geneve datagram.
  {"op": "encrypt", ..., "iv": N (optional), "in": PATH, "out": PATH}
      `in` is a Geneve frame; writes scapy's ESP-in-UDP encryption of it under
      `sequence` (low half on the wire, high half in the AAD) with the given IV, or a
      random one.
Prints one line per job; exits 1 on the first failed job, 3 when scapy is missing.

scapy 2.5.0 (Debian 12) writes 8 as the UDP length of IPv4 ESP with nat_t_header (it
builds the IP/UDP header before the ESP payload is attached; fixed upstream by
secdev/scapy#4125). encrypt writes the right length, the one field it changes.
"""
import json
import struct
import sys

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
    from scapy.layers.l2 import Ether
    from scapy.packet import raw
except ImportError as error:
    print(f"scapy_esp: {error}: install python3-scapy and python3-cryptography (scripts/setup.sh)")
    sys.exit(3)

NAT_T_PORT = 4500
UDP_PROTOCOL = 17


def security_association(job, high=None):
    """`high`: the high half of the sequence number, if not the job's."""
    key = bytes.fromhex(job["key"]) + bytes.fromhex(job["salt"])  # RFC 4106 keying material
    sequence = job["sequence"]
    return SecurityAssociation(
        ESP,
        spi=job["spi"],
        seq_num=sequence & 0xFFFFFFFF,
        crypt_algo="AES-GCM",
        crypt_key=key,
        nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT),
        esn_en=True,
        esn=sequence >> 32 if high is None else high,
    )


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def decrypt(job):
    with open(job["in"], "rb") as f:
        frame = f.read()
    packet = Ether(frame)
    sequence = job["sequence"]
    check(IP in packet and UDP in packet and ESP in packet, "not Ethernet / IPv4 / UDP / ESP")
    ip, udp, esp = packet[IP], packet[UDP], packet[ESP]
    check(ip.proto == UDP_PROTOCOL, f"IPv4 protocol {ip.proto}")
    check(ip.len == len(frame) - 14, f"IPv4 total length {ip.len} for a frame of {len(frame)}")
    check(udp.sport == NAT_T_PORT and udp.dport == NAT_T_PORT, f"UDP ports {udp.sport} -> {udp.dport}")
    check(udp.chksum == 0, f"UDP checksum {udp.chksum:#x}, not zero (RFC 3948 section 2.1)")
    check(udp.len == ip.len - ip.ihl * 4, f"UDP length {udp.len}")
    check(esp.spi == job["spi"], f"SPI {esp.spi:#x}")
    check(esp.seq == sequence & 0xFFFFFFFF, f"sequence low half {esp.seq:#x}")
    iv, ciphertext = esp.data[:8], esp.data[8:]
    check(iv == sequence.to_bytes(8, "big"), f"IV {iv.hex()} is not the sequence number")
    check(len(ciphertext) % 4 == 0, "ciphertext with ICV not a multiple of 4 bytes (RFC 4303 section 2.4)")

    # The trailer, through python3-cryptography directly: RFC 4106 nonce salt | IV,
    # AAD SPI | high | low (section 5, extended sequence numbers).
    aead = AESGCM(bytes.fromhex(job["key"]))
    nonce = bytes.fromhex(job["salt"]) + iv
    aad = struct.pack("!LLL", esp.spi, sequence >> 32, sequence & 0xFFFFFFFF)
    plain = aead.decrypt(nonce, ciphertext, aad)
    pad_length, next_header = plain[-2], plain[-1]
    check(next_header == UDP_PROTOCOL, f"next header {next_header}")
    check(plain[-2 - pad_length:-2] == bytes(range(1, pad_length + 1)), "padding is not 1, 2, 3, ...")
    check(pad_length < 4, f"pad length {pad_length}: more than alignment needs")
    wrong_aad = struct.pack("!LLL", esp.spi, (sequence >> 32) ^ 1, sequence & 0xFFFFFFFF)
    try:
        aead.decrypt(nonce, ciphertext, wrong_aad)
        raise AssertionError("opened with the wrong high half of the sequence number")
    except InvalidTag:
        pass

    # And scapy's own transport-mode NAT-T decryption, which must also refuse the wrong
    # high half. (Its SA, not decrypt's argument: decrypt takes `esn or self.esn`, so 0
    # would not be passed.)
    try:
        security_association(job, high=(sequence >> 32) ^ 1).decrypt(IP(raw(ip)))
        wrong_high_opened = True
    except IPSecIntegrityError:
        wrong_high_opened = False
    check(not wrong_high_opened, "scapy opened it with the wrong high half")
    decrypted = security_association(job).decrypt(IP(raw(ip)))
    check(decrypted[IP].proto == UDP_PROTOCOL, "decrypted packet is not UDP")
    with open(job["out"], "wb") as f:
        f.write(frame[:14] + raw(decrypted))
    return f"decrypted SPI {esp.spi:#x} sequence {sequence:#x}: {len(raw(decrypted))} bytes of IPv4"


def encrypt(job):
    with open(job["in"], "rb") as f:
        frame = f.read()
    packet = Ether(frame)
    check(IP in packet, "not Ethernet / IPv4")
    sa = security_association(job)
    iv = job["iv"].to_bytes(8, "big") if "iv" in job else None
    encrypted = bytearray(raw(sa.encrypt(packet[IP], iv=iv)))
    ihl = (encrypted[0] & 0x0F) * 4
    struct.pack_into("!H", encrypted, ihl + 4, len(encrypted) - ihl)  # secdev/scapy#4125
    check(IP(bytes(encrypted))[UDP].dport == NAT_T_PORT, "scapy did not UDP-encapsulate")
    with open(job["out"], "wb") as f:
        f.write(frame[:14] + bytes(encrypted))
    return f"encrypted sequence {job['sequence']:#x}: {len(encrypted)} bytes of IPv4"


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)["jobs"]
    for number, job in enumerate(jobs):
        try:
            line = {"decrypt": decrypt, "encrypt": encrypt}[job["op"]](job)
        except Exception as error:  # report which job, and why, then stop
            print(f"job {number} ({job['op']} {job['in']}): FAILED: {type(error).__name__}: {error}")
            return 1
        print(f"job {number}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
