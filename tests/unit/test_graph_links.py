"""Which Graph links the app follows (issue 22 #4): the configured origin, https, under the path asked for."""
import pytest

from sync.adapters.graph_links import is_graph_link

BASE = "https://graph.microsoft.com/v1.0"
G = "groups/0b6b2c1e-0000-4000-8000-000000000001/transitiveMembers"
OK = f"{BASE}/{G}?$select=id&$top=999&$skiptoken=abc"


@pytest.mark.parametrize("link", [OK, OK.replace("graph.microsoft.com", "GRAPH.microsoft.com"),
                                  OK.replace("graph.microsoft.com", "graph.microsoft.com:443"),
                                  f"{BASE}/{G}/microsoft.graph.user?$skiptoken=x", f"{BASE}/{G.upper()}?$skiptoken=x"])
def test_links_that_continue_the_collection(link):
    assert is_graph_link(link, BASE, G)


@pytest.mark.parametrize("link", [
    OK.replace("https://", "http://"), OK.replace("graph.microsoft.com", "graph.microsoft.com:8443"),
    OK.replace("graph.microsoft.com", "graph.microsoft.com.evil.example"), OK.replace("https://", "https://u:p@"),
    OK.replace("graph.microsoft.com", "evil.example"), OK.replace("/v1.0/", "/beta/"),
    f"{BASE}/groups/0b6b2c1e-0000-4000-8000-000000000002/transitiveMembers?$skiptoken=x",
    f"{BASE}/{G}/../../../users?$skiptoken=x", f"{BASE}/{G}/%2e%2e/%2E%2E/owners", f"{BASE}/{G}Extra?x",
    f"{BASE}/users", "//graph.microsoft.com/v1.0/" + G, "/v1.0/" + G, "", None, 7, OK + "\r\nX: y", OK.replace("/", "\\"),
    OK.replace("graph.microsoft.com", "graph.microsoft.com:99999"), OK.replace("graph.microsoft.com", "graph.microsoft.com:x"),
])
def test_links_that_leave_it(link):
    assert not is_graph_link(link, BASE, G)


def test_http_only_when_the_configured_graph_is_http_on_loopback():
    local = "http://127.0.0.1:5123/v1.0"
    assert is_graph_link(f"{local}/{G}?$skiptoken=x", local, G)
    assert not is_graph_link(f"http://127.0.0.1:5124/v1.0/{G}?$skiptoken=x", local, G)
    assert not is_graph_link(f"http://graph.example/v1.0/{G}", "http://graph.example/v1.0", G)
