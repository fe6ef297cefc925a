"""Signed tokens have exactly one spelling: any other encoding of the same bytes is refused, not verified."""
import pytest

from sync import signing
from sync.errors import InvalidInput

SECRET = "unit-test-signing-secret-abcdefghijklmnop"


def token():
    return signing.sign(SECRET, "enrollment", {"org": "org-a", "uid": "u1", "exp": 2_000_000_000})


def test_a_token_as_signed_verifies():
    assert signing.verify(SECRET, "enrollment", token()) == {"org": "org-a", "uid": "u1", "exp": 2_000_000_000}


def respellings(text):
    """Other spellings of ``text`` that a lenient base64url decoder reads as the same bytes."""
    yield text + "!"
    yield text + "!!"  # two: the lenient decoder then also finds the length it expects
    yield text[:3] + "*" + text[3:]
    yield text[:3] + "*~" + text[3:]
    yield text[:2] + "!" + text[2:6] + "~" + text[6:]
    yield text + "~"
    yield text[:5] + " " + text[5:]
    yield text + "\n"
    yield text + "=" * (-len(text) % 4 or 4)  # padding
    yield text[:4] + "+" + text[5:] if text[4] == "-" else text[:4] + "/" + text[5:] if text[4] == "_" else text + "+"
    # the last character with other unused low bits: decodes to the same bytes
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}.get(len(text) % 4, 0)
    if unused:
        last = alphabet.index(text[-1])
        yield text[:-1] + alphabet[last ^ 1]  # 1 is below 2**unused: an unused bit flipped
    yield text + "A"  # a dangling sixth bit group (length % 4 == 1)


@pytest.mark.parametrize("part", ["mac", "body"])
def test_any_other_spelling_of_a_token_is_refused(part):
    good = token()
    body, mac = good.split(".")
    assert len(mac) % 4 == 3  # 32 bytes: two unused low bits in the last character
    target = mac if part == "mac" else body
    tried = 0
    for other in respellings(target):
        if other == target:
            continue
        forged = f"{body}.{other}" if part == "mac" else f"{other}.{mac}"
        with pytest.raises(InvalidInput) as err:
            signing.verify(SECRET, "enrollment", forged)
        assert err.value.code == "invalid_token", other
        tried += 1
    assert tried >= 8


def test_the_strict_decoder_reads_only_what_the_encoder_writes():
    for n in range(0, 40):
        data = bytes(range(n))
        assert signing._unb64(signing._b64(data)) == data
    for bad in ("a", "ab=", "a!b", "ab c", "AB+", "AB/", "AF", "AAB"):  # "AF"/"AAB": non-zero unused bits
        with pytest.raises(ValueError):
            signing._unb64(bad)
