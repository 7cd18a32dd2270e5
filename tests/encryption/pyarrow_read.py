"""Reads one of Proxima's encrypted Parquet files with pyarrow, given the master key.

Usage: PROXIMA_STORE=<store root> PROXIMA_MASTER_KEY_FILE=<key file> python pyarrow_read.py FILE
Prints the file's first column, one value a line.

pyarrow decrypts Parquet only through its Key Management Tools API: a CryptoFactory whose
KmsClient unwraps a file's data key by the id in the file's key material. In a Proxima file
that id names its table-day's key-encryption key, kept in the store under _keys/, wrapped
by a master key. Every wrapping is AES-256-GCM: base64(nonce (12 bytes) | ciphertext | tag),
with the wrapping key's id as associated data. This is the README's example, run by
tests/encryption.rs.
"""

import base64
import json
import os
import pathlib
import sys

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

STORE = pathlib.Path(os.environ["PROXIMA_STORE"])
with open(os.environ["PROXIMA_MASTER_KEY_FILE"]) as f:
    MASTER_KEYS = {k["id"]: base64.b64decode(k["key"]) for k in json.load(f)["keys"]}


def unwrap(key: bytes, key_id: str, wrapped) -> bytes:
    if isinstance(wrapped, bytes):
        wrapped = wrapped.decode()
    raw = base64.b64decode(wrapped)
    return AESGCM(key).decrypt(raw[:12], raw[12:], key_id.encode())


class ProximaKms(pe.KmsClient):
    """Unwraps a file's data key: its KEK from the store, unwrapped by a master key."""

    def __init__(self, _config):
        pe.KmsClient.__init__(self)

    def wrap_key(self, key_bytes, master_key_identifier):
        raise NotImplementedError("this client only reads")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        with open(STORE / "_keys" / f"{master_key_identifier}.json") as f:
            kek = json.load(f)
        master = kek["masterKeyID"]
        kek_bytes = unwrap(MASTER_KEYS[master], master, kek["wrappedKEK"])
        return unwrap(kek_bytes, master_key_identifier, wrapped_key)


factory = pe.CryptoFactory(lambda config: ProximaKms(config))
decryption = factory.file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())
table = pq.ParquetFile(sys.argv[1], decryption_properties=decryption).read()
for value in table.column(0).to_pylist():
    print(value)
