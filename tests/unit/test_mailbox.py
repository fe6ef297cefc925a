"""A synced mail is exactly one address, or none: nothing a directory holds can add a recipient."""
import pytest

from sync.mailbox import is_single_address


@pytest.mark.parametrize("value", [
    "carl@x.example", "first.last+tag@sub.x.example", "o'brien@x.example", "ütf8.user@x.example",
    "user@bücher.example", "a@b.co", "x_y-z@x-y.example",
])
def test_plain_addresses_are_accepted(value):
    assert is_single_address(value)


@pytest.mark.parametrize("value", [
    "carl@x.example,attacker@evil.example", "carl@x.example;attacker@evil.example",
    "carl@x.example\u0085Bcc: attacker@evil.example", "carl@x.example\r\nBcc: attacker@evil.example",
    "carl@x.example\nattacker@evil.example", "carl@x.example\u2028attacker@evil.example",
    "carl@x.example\u2029", "Carl <carl@x.example>", '"carl@x.example" <attacker@evil.example>',
    "carl@x.example (comment)", "carl @x.example", "carl@x .example", "carl@@x.example", "carl@x@evil.example",
    "carl", "@x.example", "carl@", "carl@localhost", "carl@-x.example", "carl@x-.example", ".carl@x.example",
    "carl.@x.example", "ca..rl@x.example", "carl@x..example", "\tcarl@x.example", "carl@x.example\x00",
    "c" * 65 + "@x.example", "carl@" + "a" * 64 + ".example", "carl@x.example\u200b", "", None,
])
def test_anything_else_is_refused(value):
    assert not is_single_address(value)
