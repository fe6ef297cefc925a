"""Play the customer admin's browser through Microsoft's consent and sign-in pages, printing every hop.

    .venv/bin/python -m local.browser "<authorizeUrl from POST …/authorize>" [--ca FILE]

Follows the admin-consent page (the local identity platform, as the tenant's Global Admin that
``POST /_fake/consent {"tenant"}`` chose; under ``make run``, which shows the pages a person clicks, it signs in as
``--username``/``--password``, accepts and picks that account), the app's callback, the OpenID Connect sign-in page, and submits its
form_post to the app as a browser's script would. Stops at the portal (http://localhost:3000 locally, which is not
running): that last URL carries ``consent=pending&consentCode=<code>`` (the portal's user then confirms it:
``POST …/consent/confirm``, README "The consent sequence") or ``consent=error&error=<code>``. ``--ca`` defaults to the CA
bundle of the running dev host (``.local/authority-ca.pem``, written by ``python -m local``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CA = ROOT / ".local" / "authority-ca.pem"


def walk(url: str, ca: str, out=sys.stdout, username: str = "admin@contoso.example", password: str = "admin") -> str:
    """Every hop from the consent URL to the portal; returns the portal URL."""
    from .identity.server import parse_form_post

    with httpx.Client(timeout=30, verify=ca) as browser:
        response = browser.get(url)
        hops = 0
        while hops < 15:
            hops += 1
            print(f"{response.request.method:<4} {str(response.request.url)[:150]}\n  -> {response.status_code}", file=out)
            if response.status_code in (301, 302, 303, 307, 308):
                target = response.headers["location"]
                if not target.startswith(("https://", "http://127.0.0.1", "http://localhost:7071", "http://[::1]")) \
                        or "/directory-sync" in target:
                    print(f"  -> the portal: {target}", file=out)
                    return target
                response = browser.get(target)
                continue
            page = response.text if response.status_code == 200 else ""
            if 'name="loginfmt"' in page or "<title>Permissions requested</title>" in page \
                    or "<title>Pick an account</title>" in page:  # `python -m local --interactive-sign-in`
                if "Your account or password is incorrect." in page:
                    raise SystemExit(f"the sign-in refused {username}: give --username and --password")
                form = ({"loginfmt": username, "passwd": password} if 'name="loginfmt"' in page else
                        {"consent": "accept"} if "Permissions requested" in page else {"account": username})
                print(f"  (a page for a person: the browser posts {', '.join(sorted(form))})", file=out)
                response = browser.post(str(response.url), data=form)
                continue
            if response.status_code == 200 and 'name="hiddenform"' in response.text:
                action, fields = parse_form_post(response.text)
                print(f"  (a form_post page: the browser submits {', '.join(sorted(fields))} to {action})", file=out)
                response = browser.post(action, data=fields)
                continue
            print(response.text[:500], file=out)
            raise SystemExit(f"the walk stopped at HTTP {response.status_code}")
    raise SystemExit("too many redirects")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local.browser", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the authorizeUrl that POST …/authorize answered")
    parser.add_argument("--ca", default=str(DEFAULT_CA), help="CA bundle of the local identity platform")
    parser.add_argument("--username", default="admin@contoso.example",
                        help="who signs in when the stack shows the sign-in page (--interactive-sign-in)")
    parser.add_argument("--password", default="admin")
    args = parser.parse_args()
    walk(args.url, args.ca, username=args.username, password=args.password)


if __name__ == "__main__":
    main()
