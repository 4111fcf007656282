"""dmattack.core.hashing: the sha256 of a file against hashlib on the whole bytes; the memoised
variant sees a changed file."""

import hashlib
import os

from dmattack.core.hashing import READ_BYTES, sha256_file, weights_sha256


def test_sha256_file_equals_hashlib_on_the_whole_bytes(tmp_path):
    data = os.urandom(2 * READ_BYTES + 123)  # spans several reads
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_weights_sha256_is_memoised_but_sees_a_changed_file(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"first")
    assert weights_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"second, longer")  # another size: a new memo key
    assert weights_sha256(path) == hashlib.sha256(b"second, longer").hexdigest()
    assert weights_sha256(str(path)) == sha256_file(path)
