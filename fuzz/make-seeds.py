#!/usr/bin/env python3
"""Writes the seed inputs of the key-material targets (jwks_parse, jwk_parse,
key_material) into fuzz/corpus/<target>/seed-*, from the public test keys in
crates/jotd-keys/tests/data. Python 3 standard library only; idempotent.

    python3 fuzz/make-seeds.py
"""
import base64, json, pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
DATA = FUZZ.parent / "crates/jotd-keys/tests/data"
B64U = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_tlv(buf, i=0):
    """(tag, content, next index) of the DER element at buf[i]."""
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[i:i + k], "big")
        i += k
    return tag, buf[i:i + n], i + n


def pem_der(name):
    lines = (DATA / name).read_text().strip().splitlines()
    return base64.b64decode("".join(lines[1:-1]))


def spki_key_bits(spki):
    _, seq, _ = der_tlv(spki)
    _, _, i = der_tlv(seq)  # AlgorithmIdentifier
    _, bits, _ = der_tlv(seq, i)  # BIT STRING
    return bits[1:]  # drop the unused-bits byte


def rsa_n_e(spki):
    _, seq, _ = der_tlv(spki_key_bits(spki))
    _, n, i = der_tlv(seq)
    _, e, _ = der_tlv(seq, i)
    return n.lstrip(b"\0"), e


EC = {"ec_p256.pem": ("P-256", "ES256", 32), "ec_p384.pem": ("P-384", "ES384", 48),
      "ec_p521.pem": ("P-521", "ES512", 66), "ec_secp256k1.pem": ("secp256k1", "ES256K", 32)}


def jwks_of_test_keys():
    keys = {}
    n, e = rsa_n_e(pem_der("rsa2048.pem"))
    keys["rsa"] = {"kty": "RSA", "alg": "RS256", "use": "sig", "n": B64U(n), "e": B64U(e)}
    for pem, (crv, alg, size) in EC.items():
        point = spki_key_bits(pem_der(pem))
        keys[alg] = {"kty": "EC", "crv": crv, "x": B64U(point[1:1 + size]), "y": B64U(point[1 + size:])}
    keys["ed"] = {"kty": "OKP", "crv": "Ed25519", "x": B64U(spki_key_bits(pem_der("ed25519.pem")))}
    keys["oct"] = {"kty": "oct", "alg": "HS256", "k": B64U(bytes(range(32)))}
    return keys


def write(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    # key_material: every public file form jotd accepts, and a few it refuses.
    for f in sorted(DATA.iterdir()):
        if f.suffix == ".pem" or f.name == "rsa2048.der":
            write("key_material", f.name, f.read_bytes())
    p256 = (DATA / "ec_p256.pem").read_bytes()
    write("key_material", "p256.pem.b64", base64.b64encode(p256) + b"\n")
    write("key_material", "p256.spki.b64", base64.b64encode(pem_der("ec_p256.pem")))
    write("key_material", "p256.point", spki_key_bits(pem_der("ec_p256.pem")))
    write("key_material", "ed25519.raw", spki_key_bits(pem_der("ed25519.pem")))
    write("key_material", "rsa2048.pkcs1.der", pem_der("rsa2048_pkcs1.pem"))
    write("key_material", "two-blocks.pem", p256 + (DATA / "ed25519.pem").read_bytes())
    write("key_material", "private.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")

    keys = jwks_of_test_keys()
    # jwk_parse: each key alone, plus the members that refuse a key.
    for name, k in keys.items():
        write("jwk_parse", name + ".json", json.dumps(k))
    rsa = keys["rsa"]
    write("jwk_parse", "rsa-no-alg.json", json.dumps({k: v for k, v in rsa.items() if k != "alg"}))
    write("jwk_parse", "enc.json", json.dumps({**keys["ES256"], "use": "enc"}))
    write("jwk_parse", "key-ops.json", json.dumps({**keys["ed"], "key_ops": ["sign"]}))
    write("jwk_parse", "private.json", json.dumps({**keys["ES256"], "d": "AA"}))
    write("jwk_parse", "alg-mismatch.json", json.dumps({**keys["ES384"], "alg": "ES256"}))

    # jwks_parse: byte 0 = config alg (0 none, n = Algorithm::ALL[n-1]), byte 1 = max_keys % 8.
    kid = lambda name, k: {**k, "kid": name}
    full = {"keys": [kid(n, k) for n, k in keys.items()]}
    write("jwks_parse", "all", b"\x00\x07" + json.dumps(full).encode())
    write("jwks_parse", "all-over-limit", b"\x00\x02" + json.dumps(full).encode())
    write("jwks_parse", "rs256", b"\x01\x04" + json.dumps({"keys": [kid("r", rsa)]}).encode())
    mixed = {"keys": [kid("a", keys["ES256"]), {**kid("a", keys["ES256"]), "use": "enc"},
                      {k: v for k, v in keys["ed"].items()}, {"kty": "Kyber", "kid": "pq"}, 5]}
    write("jwks_parse", "mixed", b"\x00\x04" + json.dumps(mixed).encode())
    dup = {"keys": [kid("a", keys["ES256"]), kid("a", keys["ed"])]}
    write("jwks_parse", "dup-kid", b"\x00\x04" + json.dumps(dup).encode())


main()
