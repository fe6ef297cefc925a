// The reference console: each page calls the Directory Sync API through the console's /api (README, "The console").
"use strict";

const ATTRIBUTES = [
  ["userPrincipalName", "User principal name (userPrincipalName)"],
  ["mail", "Mail (mail)"],
  ["onPremisesSamAccountName", "On-premises SAM account name (onPremisesSamAccountName)"],
  ["employeeId", "Employee ID (employeeId)"],
];
const SUBSCRIPTION_STATUS = {
  authorization_required: "Not authorized", authorization_pending: "Authorization pending",
  authorized: "Authorized", consent_revoked: "Consent revoked",
};
const RUN_STATUS = {
  queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed",
  needs_review: "Needs review", previewed: "Previewed",
};
const REASONS = {
  blocked_in_directory: "blocked in the directory", removed_from_directory: "removed from the directory",
  deactivated_by_admin: "deactivated by an administrator",
};
const MIN_SEARCH = 4;
const AUTHORIZING = "dirsync.authorizing"; // the subscription whose consent this browser started
const main = () => document.getElementById("main");

// --- small helpers ----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `The API answered ${status}.`);
    this.status = status;
    this.code = body.code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/api${path}`, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({ code: "unreadable", message: `The API answered ${response.status}.` }));
  if (!response.ok) {
    if (response.status === 401 && data.code === "signed_out") location.assign(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new ApiError(response.status, data);
  }
  return data;
}

function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

function clearError() {
  const box = document.getElementById("error");
  box.hidden = true;
  box.textContent = "";
}

// Every click handler reports what the API answered instead of swallowing it.
const guarded = (fn) => async (event) => {
  clearError();
  try {
    await fn(event);
  } catch (error) {
    showError(error);
  }
};

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const q = (value) => encodeURIComponent(value);

function render(...nodes) {
  main().replaceChildren(...nodes);
}

function table(testid, caption, headings, rows) {
  return h("table", { "data-testid": testid },
    h("caption", { class: "hint" }, caption),
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows));
}

// --- Directory Sync: the subscriptions ------------------------------------------------------------

async function subscriptionsPage() {
  const { subscriptions } = await api("GET", "/directory/subscriptions");
  const name = h("input", { id: "new-name", value: "Active Directory", maxlength: "200" });
  render(
    h("h1", {}, "Directory Sync"),
    h("section", {},
      h("label", { for: "new-name" }, "Name"), name,
      h("div", { class: "actions" }, h("button", {
        type: "button",
        onclick: guarded(async () => {
          const created = await api("POST", "/directory/subscriptions", { name: name.value });
          location.assign(`/directory-sync/${q(created.id)}`);
        }),
      }, "New Active Directory"))),
    table("subscriptions", "Your directories", ["Name", "Status", "Microsoft Entra tenant", "Last run"],
      subscriptions.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `/directory-sync/${q(s.id)}` }, s.name)),
        h("td", {}, SUBSCRIPTION_STATUS[s.status] || s.status),
        h("td", {}, s.azureTenantId || "—"),
        h("td", {}, s.lastRun ? RUN_STATUS[s.lastRun.status] || s.lastRun.status : "—")))),
  );
}

// Microsoft sent the browser back here (PORTAL_CONSENT_RETURN_PATH): confirm the consent this browser started.
async function consentReturn(params) {
  const id = params.get("subscriptionId");
  history.replaceState(null, "", `/directory-sync/${q(id)}`);
  if (params.get("consent") === "error") {
    await subscriptionPage(id);
    showError(`Microsoft's consent did not complete (${params.get("error")}). Press Authorize to try again.`);
    return;
  }
  const code = params.get("consentCode");
  const details = await api("GET", `/directory/subscriptions/${q(id)}/consent?consentCode=${q(code)}`);
  const what = `${details.tenantDomain || details.tenantId} (tenant ${details.tenantId}), consented by ` +
    `${details.consentedBy.name} (${details.consentedBy.username})`;
  const confirm = async () => {
    await api("POST", `/directory/subscriptions/${q(id)}/consent/confirm`, { consentCode: code });
    sessionStorage.removeItem(AUTHORIZING);
    sessionStorage.setItem(`dirsync.domain.${id}`, details.tenantDomain || "");
    await subscriptionPage(id, `Connected ${what}.`);
  };
  if (sessionStorage.getItem(AUTHORIZING) === id) {
    await confirm(); // this browser pressed Authorize: the same user, the same session
    return;
  }
  render(h("h1", {}, "Connect this directory?"),
    h("section", {}, h("p", {}, `Microsoft's consent names ${what}.`),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: guarded(confirm) }, "Confirm"),
        h("a", { href: `/directory-sync/${q(id)}` }, "Not now"))));
}

// --- one subscription ---------------------------------------------------------------------------

async function subscriptionPage(id, notice) {
  const sub = await api("GET", `/directory/subscriptions/${q(id)}`);
  const base = `/directory/subscriptions/${q(id)}`;
  const domain = sessionStorage.getItem(`dirsync.domain.${id}`);
  const statusText = SUBSCRIPTION_STATUS[sub.status] || sub.status;

  // Authorize
  const authorize = h("section", { "aria-labelledby": "h-authorize" },
    h("h2", { id: "h-authorize" }, "Microsoft Entra ID"),
    h("p", {}, "Status: ", h("span", { class: `status ${statusText}`, id: "subscription-status" }, statusText)),
    h("p", {}, "Tenant: ", h("span", { id: "tenant" }, sub.azureTenantId ? `${domain ? domain + " · " : ""}${sub.azureTenantId}` : "none connected")),
    h("div", { class: "actions" }, h("button", {
      type: "button",
      onclick: guarded(async () => {
        const { authorizeUrl } = await api("POST", `${base}/authorize`);
        sessionStorage.setItem(AUTHORIZING, id);
        location.assign(authorizeUrl);
      }),
    }, "Authorize")));

  // Options: AD attribute and Is Sign in Blocked on AD
  const attribute = h("select", { id: "ad-attribute" },
    ATTRIBUTES.map(([value, label]) => h("option", { value, selected: value === sub.usernameAttribute }, label)));
  const blocked = h("input", { type: "checkbox", id: "sign-in-blocked", checked: sub.deactivateBlockedUsers });
  const saveOptions = h("button", { type: "button" }, "Save");
  saveOptions.addEventListener("click", guarded(async () => {
    await api("PATCH", base, { usernameAttribute: attribute.value, deactivateBlockedUsers: blocked.checked });
    saveOptions.textContent = "Saved";
  }));
  for (const input of [attribute, blocked]) input.addEventListener("change", () => { saveOptions.textContent = "Save"; });
  const options = h("section", { "aria-labelledby": "h-options" },
    h("h2", { id: "h-options" }, "Options"),
    h("label", { for: "ad-attribute" }, "AD attribute"), attribute,
    h("p", { class: "hint" }, "The directory attribute that becomes the portal username."),
    h("label", { class: "inline", for: "sign-in-blocked" }, blocked, "Is Sign in Blocked on AD"),
    h("p", { class: "hint" }, "Users whose sign-in is blocked in Microsoft Entra ID become Inactive."),
    h("div", { class: "actions" }, saveOptions));

  // Edit Group Status: Send Enrollment Email to the Newly Synced Users
  const enroll = h("input", { type: "checkbox", id: "send-enrollment", checked: sub.sendEnrollmentEmail });
  const saveEnroll = h("button", { type: "button" }, "Save");
  saveEnroll.addEventListener("click", guarded(async () => {
    await api("PATCH", base, { sendEnrollmentEmail: enroll.checked });
    saveEnroll.textContent = "Saved";
  }));
  enroll.addEventListener("change", () => { saveEnroll.textContent = "Save"; });
  const groupStatus = h("div", { id: "group-status", hidden: true },
    h("label", { class: "inline", for: "send-enrollment" }, enroll, "Send Enrollment Email to the Newly Synced Users"),
    h("div", { class: "actions" }, saveEnroll));
  const editGroupStatus = h("button", { type: "button", class: "secondary", "aria-expanded": "false", "aria-controls": "group-status" },
    "Edit Group Status");
  editGroupStatus.addEventListener("click", () => {
    const open = groupStatus.hidden;
    groupStatus.hidden = !open;
    editGroupStatus.setAttribute("aria-expanded", String(open));
  });

  // Selected Groups: search from four characters, click names to pick several
  let selected = sub.groups.slice();
  const search = h("input", { id: "group-search", type: "search", autocomplete: "off", "aria-describedby": "group-hint" });
  const hint = h("p", { class: "hint", id: "group-hint", "aria-live": "polite" }, `Type at least ${MIN_SEARCH} characters to search.`);
  const found = h("ul", { class: "choices", "aria-label": "Groups found" });
  const chosen = h("ul", { class: "choices chosen", "aria-label": "Groups picked" });
  const saveGroups = async (groups) => {
    const answer = await api("PUT", `${base}/groups`, { groupIds: groups.map((g) => g.id) });
    selected = answer.groups;
    drawChosen();
  };
  const drawChosen = () => chosen.replaceChildren(...(selected.length ? selected.map((g) => h("li", {},
    h("button", { type: "button", "aria-label": `Remove ${g.displayName}`, onclick: guarded(() => saveGroups(selected.filter((s) => s.id !== g.id))) },
      `${g.displayName} ✕`))) : [h("li", { class: "hint" }, "No group selected yet.")]));
  drawChosen();
  let searchTimer;
  let searchSeq = 0;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    const text = search.value.trim();
    if (text.length < MIN_SEARCH) {
      found.replaceChildren();
      hint.textContent = `Type at least ${MIN_SEARCH} characters to search (${MIN_SEARCH - text.length} more).`;
      return;
    }
    hint.textContent = "Searching…";
    searchTimer = setTimeout(guarded(async () => {
      const seq = ++searchSeq;
      const { groups } = await api("GET", `${base}/directory-groups?search=${q(text)}`).catch((error) => {
        hint.textContent = "";
        throw error;
      });
      if (seq !== searchSeq) return;
      hint.textContent = groups.length ? `${groups.length} found: click a name to select it.` : "No group matches.";
      found.replaceChildren(...groups.map((g) => h("li", {}, h("button", {
        type: "button",
        title: g.membershipReadable === false ? "Its membership is hidden from this app: a sync of it fails." : null,
        onclick: guarded(async () => {
          if (!selected.some((s) => s.id === g.id)) await saveGroups([...selected, { id: g.id, displayName: g.displayName }]);
        }),
      }, g.displayName))));
    }), 250);
  });
  const groups = h("section", { "aria-labelledby": "h-groups" },
    h("h2", { id: "h-groups" }, "Groups"),
    h("label", { for: "group-search" }, "Selected Groups"), search, hint, found,
    h("p", { class: "hint" }, "Picked:"), chosen,
    h("div", { class: "actions" }, editGroupStatus), groupStatus);

  // Preview and Full Sync, with the run's progress and its end
  const progress = h("progress", { id: "sync-progress", max: "1", value: "0", "aria-labelledby": "progress-label" });
  const progressLabel = h("span", { id: "progress-label" }, "Sync progress");
  const runStatus = h("span", { class: "status", id: "run-status" }, "—");
  const runDetail = h("div", { id: "run-detail", "aria-live": "polite" });
  const runBox = h("div", { hidden: true, id: "run-box" },
    h("p", {}, progressLabel, " ", progress),
    h("p", {}, "Run status: ", runStatus), runDetail);
  const runsBody = h("div", {});
  const drawRuns = async () => {
    const { runs } = await api("GET", `${base}/runs`);
    runsBody.replaceChildren(table("runs", "Runs, newest first", ["Started", "Trigger", "Kind", "Status", "Created", "Updated", "Deactivated", "Skipped"],
      runs.map((r) => h("tr", {},
        h("td", {}, when(r.startedAt)), h("td", {}, r.trigger), h("td", {}, r.dryRun ? "Preview" : "Sync"),
        h("td", {}, RUN_STATUS[r.status] || r.status), h("td", {}, r.counts.created), h("td", {}, r.counts.updated),
        h("td", {}, r.counts.deactivated), h("td", {}, r.counts.skipped)))));
  };
  const follow = async (runId) => {
    runBox.hidden = false;
    runDetail.replaceChildren();
    let run;
    for (;;) {
      run = await api("GET", `${base}/runs/${q(runId)}`);
      const p = run.progress || { groupsDone: run.groupsDone, groupsTotal: run.groupsTotal };
      progress.max = Math.max(p.groupsTotal || 1, 1);
      progress.value = Math.min(p.groupsDone || 0, progress.max);
      runStatus.textContent = RUN_STATUS[run.status] || run.status;
      runStatus.className = `status ${runStatus.textContent}`;
      if (run.status !== "queued" && run.status !== "running") break;
      await sleep(400);
    }
    progress.value = progress.max;
    await showRunEnd(run);
    await drawRuns();
  };
  const showRunEnd = async (run) => {
    const c = run.counts;
    const parts = [h("p", {}, `Created ${c.created}, updated ${c.updated}, reactivated ${c.reactivated}, deactivated ${c.deactivated}, ` +
      `unchanged ${c.unchanged}, e-mails queued ${c.emailsQueued}, skipped ${c.skipped}.`)];
    if (run.errors.length) {
      parts.push(h("ul", { class: "run-errors" }, run.errors.map((e) => h("li", {}, `${e.code}: ${e.message}`))));
    }
    if (run.status === "needs_review") {
      parts.push(h("button", {
        type: "button",
        onclick: guarded(async () => {
          await api("POST", `${base}/runs/${q(run.runId)}/approve`);
          await follow(run.runId);
        }),
      }, "Approve"));
    }
    if (run.dryRun && run.status === "previewed") {
      const { changes } = await api("GET", `${base}/runs/${q(run.runId)}/changes?pageSize=200`);
      parts.push(table("preview", "Proposed changes (nothing is written by a preview)", ["Username", "Display name", "Change", "Reason"],
        changes.map((ch) => h("tr", {}, h("td", {}, ch.username), h("td", {}, ch.displayName), h("td", {}, ch.change),
          h("td", {}, ch.reason)))));
    }
    runDetail.replaceChildren(...parts);
  };
  const start = (dryRun) => guarded(async () => {
    const { runId } = await api("POST", `${base}/sync`, dryRun ? { dryRun: true } : undefined);
    await follow(runId);
  });
  const sync = h("section", { "aria-labelledby": "h-sync" },
    h("h2", { id: "h-sync" }, "Sync"),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", onclick: start(true) }, "Preview"),
      h("button", { type: "button", onclick: start(false) }, "Full Sync")),
    runBox);

  render(
    h("p", {}, h("a", { href: "/directory-sync" }, "Directory Sync")),
    h("h1", {}, sub.name),
    notice ? h("p", { class: "notice", role: "status" }, notice) : null,
    authorize, options, groups, sync,
    h("section", { "aria-labelledby": "h-runs" }, h("h2", { id: "h-runs" }, "Runs"), runsBody),
  );
  await drawRuns();
}

// --- Users and Groups -----------------------------------------------------------------------------

function statusText(user) {
  if (user.status === "Active") return "Active";
  return user.statusReason ? `Inactive (${REASONS[user.statusReason] || user.statusReason})` : "Inactive";
}

async function usersPage() {
  const params = new URLSearchParams(location.search);
  const search = h("input", { id: "user-search", type: "search", name: "search", value: params.get("search") || "" });
  const status = h("select", { id: "user-status", name: "status" },
    [["", "All"], ["Active", "Active"], ["Inactive", "Inactive"]].map(([v, t]) => h("option", { value: v, selected: v === (params.get("status") || "") }, t)));
  const query = new URLSearchParams({ pageSize: params.get("pageSize") || "25" });
  if (search.value) query.set("search", search.value);
  if (status.value) query.set("status", status.value);
  if (params.get("continuationToken")) query.set("continuationToken", params.get("continuationToken"));
  const page = await api("GET", `/users?${query}`);
  const next = new URLSearchParams(params);
  if (page.continuationToken) next.set("continuationToken", page.continuationToken);
  const first = new URLSearchParams(params);
  first.delete("continuationToken");
  render(
    h("h1", {}, "Users"),
    h("form", { class: "filters", method: "GET", action: "/users", role: "search" },
      params.get("pageSize") ? h("input", { type: "hidden", name: "pageSize", value: params.get("pageSize") }) : null,
      h("div", {}, h("label", { for: "user-search" }, "Search"), search),
      h("div", {}, h("label", { for: "user-status" }, "Status"), status),
      h("button", { type: "submit" }, "Apply")),
    table("users-grid", "Portal users", ["Username", "Display name", "Status", "Source type", "Groups"],
      page.users.map((u) => h("tr", {},
        h("td", {}, h("a", { href: `/users/${q(u.id)}` }, u.username)),
        h("td", {}, u.displayName),
        h("td", {}, h("span", { class: `status ${u.status}` }, statusText(u))),
        h("td", {}, u.sourceType),
        h("td", {}, u.groups.map((g) => g.displayName).join(", "))))),
    h("nav", { class: "actions", "aria-label": "Pages" },
      params.get("continuationToken") ? h("a", { href: `/users?${first}` }, "First page") : null,
      page.continuationToken ? h("a", { href: `/users?${next}`, rel: "next" }, "Next page") : null),
  );
}

async function userPage(id) {
  const [user, { history }] = await Promise.all([api("GET", `/users/${q(id)}`), api("GET", `/users/${q(id)}/history`)]);
  const synced = user.sourceType === "AdSync";
  const action = user.status === "Active" ? "deactivate" : "activate";
  const button = h("button", {
    type: "button", disabled: synced, "aria-describedby": synced ? "managed" : null,
    onclick: guarded(async () => {
      await api("POST", `/users/${q(id)}/${action}`);
      await userPage(id);
    }),
  }, action === "deactivate" ? "Deactivate" : "Activate");
  render(
    h("p", {}, h("a", { href: "/users" }, "Users")),
    h("h1", {}, user.displayName || user.username),
    h("section", {}, h("dl", {},
      h("dt", {}, "Username"), h("dd", {}, user.username),
      h("dt", {}, "E-mail"), h("dd", {}, user.email || "—"),
      h("dt", {}, "Status"), h("dd", {}, h("span", { class: `status ${user.status}` }, statusText(user))),
      h("dt", {}, "Source type"), h("dd", {}, user.sourceType),
      h("dt", {}, "Groups"), h("dd", {}, user.groups.map((g) => g.displayName).join(", ") || "—"),
      h("dt", {}, "Enrollment e-mail"), h("dd", {}, when(user.enrollmentEmailSentAt)),
      h("dt", {}, "Enrolled"), h("dd", {}, when(user.enrolledAt))),
      h("div", { class: "actions" }, button,
        synced ? h("span", { id: "managed", class: "hint" }, "Managed by the directory: block or remove this user in Microsoft Entra ID.") : null)),
    h("h2", {}, "History"),
    table("history", "Newest first", ["When", "Change", "Reason", "Trigger", "Fields"],
      history.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.change), h("td", {}, e.reason), h("td", {}, e.trigger),
        h("td", {}, Object.entries(e.fields || {}).map(([k, [a, b]]) => `${k}: ${a ?? "—"} → ${b ?? "—"}`).join("; "))))),
  );
}

async function groupsPage() {
  const { groups } = await api("GET", "/groups");
  render(
    h("h1", {}, "Groups"),
    table("groups-grid", "Synced groups", ["Name", "Users", "Last synced"],
      groups.map((g) => h("tr", {}, h("td", {}, g.displayName), h("td", {}, g.userCount), h("td", {}, when(g.lastSyncedAt))))),
  );
}

// --- routing ----------------------------------------------------------------------------------------

async function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  for (const link of document.querySelectorAll("nav[aria-label=Console] a")) {
    const here = path === link.getAttribute("href") || path.startsWith(`${link.getAttribute("href")}/`);
    if (here) link.setAttribute("aria-current", "page");
  }
  fetch("/session").then((r) => (r.ok ? r.json() : null)).then((s) => {
    if (s) document.getElementById("who").textContent = `${s.organisation} · ${s.role}`;
  });
  let m;
  if (path === "/directory-sync" && params.get("subscriptionId") && params.get("consent")) await consentReturn(params);
  else if (path === "/directory-sync") await subscriptionsPage();
  else if ((m = path.match(/^\/directory-sync\/([^/]+)$/))) await subscriptionPage(decodeURIComponent(m[1]));
  else if (path === "/users") await usersPage();
  else if ((m = path.match(/^\/users\/([^/]+)$/))) await userPage(decodeURIComponent(m[1]));
  else if (path === "/groups") await groupsPage();
}

document.addEventListener("DOMContentLoaded", () => {
  route().catch((error) => {
    render(h("h1", {}, "Directory Sync"));
    showError(error);
  });
});
