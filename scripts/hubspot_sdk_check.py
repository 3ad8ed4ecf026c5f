#!/usr/bin/env python3
"""Exercise HubSpot's official Python client (hubspot-api-client) against the
crmsync sandbox, unchanged except for its configuration host.

Usage: python3 scripts/hubspot_sdk_check.py [BASE_URL]   (default http://127.0.0.1:8090)

Needs `pip install hubspot-api-client`. Assumes the sandbox's default portal,
app, token and keys, and at least a few seeded contacts. Prints PASS/FAIL per
check, ends with `N passed, M failed`, and exits non-zero if any check failed.
"""

import datetime as dt
import http.server
import json
import sys
import threading
import time
import traceback
import urllib.request
import uuid

import hubspot
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.properties import PropertyCreate
from hubspot.utils.signature import Signature
from hubspot.webhooks import SettingsChangeRequest, SubscriptionCreateRequest, ThrottlingSettings

BASE = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8090").rstrip("/")
TOKEN = "pat-na1-00000000-0000-4000-8000-000000000000"
PORTAL_ID = 62515
APP_ID = 54321
CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
DEV_KEY = "sandbox-developer-key"
REDIRECT_URI = "http://localhost/cb"
RUN = uuid.uuid4().hex[:10]

RESULTS = []


def check(name):
    """Decorator: runs the check now, records PASS/FAIL with the reason."""

    def wrap(fn):
        try:
            detail = fn()
            RESULTS.append(True)
            print(f"PASS {name}" + (f" — {detail}" if detail else ""), flush=True)
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            RESULTS.append(False)
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            print(f"FAIL {name} — {reason[:900]}", flush=True)
            if "-v" in sys.argv:
                traceback.print_exc()
        return fn

    return wrap


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def client(**kwargs):
    # The SDK copies every config key onto each generated Configuration, so
    # `host` points all generated APIs at the sandbox; `base_url` does the same
    # for the generic `api_request` helper.
    return HubSpot(host=BASE, base_url=BASE, **kwargs)


api = client(access_token=TOKEN)
dev = client(api_key=DEV_KEY)
contacts = api.crm.contacts
state = {}

# --------------------------------------------------------------------------- contacts basic


@check("contacts.basic_api.get_page pages to the end")
def _():
    total_seen, after, pages, ids = 0, None, 0, set()
    while True:
        page = contacts.basic_api.get_page(limit=100, after=after, properties=["email", "firstname"])
        pages += 1
        for obj in page.results:
            ids.add(obj.id)
        total_seen += len(page.results)
        if page.paging is None or page.paging.next is None:
            break
        after = page.paging.next.after
        expect(pages < 1000, "paging does not end")
    expect(total_seen == len(ids), f"duplicates across pages: {total_seen} rows, {len(ids)} ids")
    # Count cross-check with search's total.
    found = contacts.search_api.do_search(PublicObjectSearchRequest(limit=1))
    expect(found.total == len(ids), f"paged {len(ids)} ids but search total={found.total}")
    state["contact_ids"] = sorted(ids, key=int)
    return f"{len(ids)} contacts in {pages} pages"


@check("contacts.basic_api.get_by_id with properties_with_history")
def _():
    cid = state["contact_ids"][0]
    obj = contacts.basic_api.get_by_id(cid, properties=["email", "firstname"], properties_with_history=["firstname"])
    expect(obj.id == cid, f"id {obj.id} != {cid}")
    expect(obj.properties_with_history and "firstname" in obj.properties_with_history, f"no history: {obj.properties_with_history}")
    hist = obj.properties_with_history["firstname"]
    expect(len(hist) >= 1 and hist[0].timestamp is not None, f"bad history {hist}")
    return f"{len(hist)} history entries, source_type={hist[0].source_type}"


@check("contacts.basic_api.create")
def _():
    email = f"sdk-{RUN}@example.com"
    obj = contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": email, "firstname": "Sdk"}))
    expect(obj.properties.get("email") == email, f"email {obj.properties.get('email')}")
    expect(isinstance(obj.created_at, dt.datetime), f"created_at {obj.created_at!r}")
    state["created_id"] = obj.id
    return f"id={obj.id}"


@check("contacts.basic_api.update")
def _():
    obj = contacts.basic_api.update(state["created_id"], SimplePublicObjectInput(properties={"firstname": "Updated"}))
    expect(obj.properties.get("firstname") == "Updated", f"firstname {obj.properties.get('firstname')}")
    again = contacts.basic_api.get_by_id(state["created_id"], properties=["firstname"])
    expect(again.properties.get("firstname") == "Updated", "update not visible on read")


@check("contacts.basic_api.archive")
def _():
    contacts.basic_api.archive(state["created_id"])
    try:
        contacts.basic_api.get_by_id(state["created_id"])
    except hubspot.crm.contacts.ApiException as exc:
        expect(exc.status == 404, f"status {exc.status}")
    else:
        raise AssertionError("archived contact still readable")


@check("contacts.basic_api.get_by_id archived=True / get_page archived=True")
def _():
    # The SDK serialises Python booleans as `archived=True` (capital T).
    arch = contacts.basic_api.get_by_id(state["created_id"], archived=True)
    expect(arch.archived is True and arch.archived_at is not None, f"archived={arch.archived} archived_at={arch.archived_at}")
    page = contacts.basic_api.get_page(limit=100, archived=True)
    expect(page.results and all(o.archived for o in page.results), f"get_page(archived=True) returned archived={[o.archived for o in page.results][:5]}")


# --------------------------------------------------------------------------- properties


@check("properties.core_api.create unique property")
def _():
    name = f"sdk_uid_{RUN}"
    prop = api.crm.properties.core_api.create(
        "contacts",
        PropertyCreate(name=name, label=f"SDK uid {RUN}", type="string", field_type="text", group_name="contactinformation", has_unique_value=True),
    )
    expect(prop.name == name and prop.has_unique_value is True, f"got name={prop.name} unique={prop.has_unique_value}")
    state["uid_prop"] = name


@check("properties.core_api.get_all / get_by_name")
def _():
    allp = api.crm.properties.core_api.get_all("contacts")
    names = {p.name for p in allp.results}
    expect({"email", "firstname", "lastmodifieddate"} <= names, f"missing builtins in {sorted(names)[:10]}...")
    expect(state.get("uid_prop") in names, "created property not listed")
    one = api.crm.properties.core_api.get_by_name("contacts", "email")
    expect(one.name == "email" and one.type == "string", f"email prop {one.name}/{one.type}")
    return f"{len(allp.results)} properties"


# --------------------------------------------------------------------------- contacts batch


@check("contacts.batch_api.read")
def _():
    ids = state["contact_ids"][:5]
    res = contacts.batch_api.read(BatchReadInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in ids], properties=["email"], properties_with_history=[]))
    expect(res.status == "COMPLETE", f"status {res.status}")
    expect(sorted(o.id for o in res.results) == sorted(ids), f"ids {[o.id for o in res.results]}")


@check("contacts.batch_api.create")
def _():
    inputs = [SimplePublicObjectBatchInputForCreate(properties={"email": f"sdk-b{i}-{RUN}@example.com", "firstname": f"B{i}"}, associations=[]) for i in range(3)]
    res = contacts.batch_api.create(BatchInputSimplePublicObjectBatchInputForCreate(inputs=inputs))
    expect(len(res.results) == 3, f"{len(res.results)} results")
    state["batch_ids"] = [o.id for o in res.results]


@check("contacts.batch_api.update")
def _():
    inputs = [SimplePublicObjectBatchInput(id=i, properties={"lastname": "Batched"}) for i in state["batch_ids"]]
    res = contacts.batch_api.update(BatchInputSimplePublicObjectBatchInput(inputs=inputs))
    expect(all(o.properties.get("lastname") == "Batched" for o in res.results), "lastname not set")


@check("contacts.batch_api.upsert by unique id_property")
def _():
    prop = state["uid_prop"]
    key_new, key_old = f"new-{RUN}", f"old-{RUN}"
    # Give one existing contact a unique value, then upsert it plus a new one.
    contacts.basic_api.update(state["batch_ids"][0], SimplePublicObjectInput(properties={prop: key_old}))
    inputs = [
        SimplePublicObjectBatchInputUpsert(id=key_old, id_property=prop, properties={"firstname": "UpsertedOld"}),
        SimplePublicObjectBatchInputUpsert(id=key_new, id_property=prop, properties={"firstname": "UpsertedNew", "email": f"sdk-u-{RUN}@example.com"}),
    ]
    res = contacts.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs))
    by_new = {o.new: o for o in res.results}
    expect(len(res.results) == 2 and set(by_new) == {True, False}, f"new flags {[o.new for o in res.results]}")
    expect(by_new[False].id == state["batch_ids"][0], f"existing matched {by_new[False].id}")
    state["batch_ids"].append(by_new[True].id)


@check("contacts.batch_api.archive")
def _():
    contacts.batch_api.archive(BatchInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in state["batch_ids"]]))
    res = contacts.batch_api.read(BatchReadInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in state["batch_ids"]], properties=[], properties_with_history=[]))
    expect(len(res.results) == 0, f"{len(res.results)} still readable")


# --------------------------------------------------------------------------- search


@check("contacts.search_api.do_search GTE lastmodifieddate, sorted asc, paged")
def _():
    since = "0"
    flt = Filter(property_name="lastmodifieddate", operator="GTE", value=since)
    after, seen, last, pages = None, [], None, 0
    while True:
        req = PublicObjectSearchRequest(filter_groups=[FilterGroup(filters=[flt])], sorts=["lastmodifieddate"], properties=["lastmodifieddate", "email"], limit=100, after=after)
        res = contacts.search_api.do_search(req)
        pages += 1
        for o in res.results:
            val = o.properties.get("lastmodifieddate")
            expect(last is None or val >= last, f"not ascending: {last} then {val}")
            last = val
            seen.append(o.id)
        if res.paging is None or res.paging.next is None:
            break
        after = res.paging.next.after
        expect(pages < 200, "search paging does not end")
    expect(len(seen) == len(set(seen)), "duplicate ids across search pages")
    expect(len(seen) == res.total, f"{len(seen)} seen vs total {res.total}")
    return f"{len(seen)} results in {pages} pages"


# --------------------------------------------------------------------------- leads


def lead_contact(tag):
    """A contact for a new lead: HubSpot's guide says a lead "Must be associated with an existing contact"."""
    return contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": f"sdk-lead-{tag}-{RUN}@example.com"})).id


@check("crm.objects.leads.basic_api create/get")
def _():
    from hubspot.crm.objects.leads import AssociationSpec, PublicAssociationsForObject, PublicObjectId
    from hubspot.crm.objects.leads import SimplePublicObjectInputForCreate as LeadCreate
    from hubspot.crm.objects.leads.exceptions import ApiException as LeadsApiException

    try:
        api.crm.objects.leads.basic_api.create(LeadCreate(properties={"hs_lead_name": f"SDK bare lead {RUN}"}, associations=[]))
        raise AssertionError("a lead without a contact was created")
    except LeadsApiException as e:
        expect(e.status == 400, f"status {e.status}")
    to_contact = PublicAssociationsForObject(
        to=PublicObjectId(id=lead_contact("typed")),
        types=[AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=578)],
    )
    lead = api.crm.objects.leads.basic_api.create(LeadCreate(properties={"hs_lead_name": f"SDK lead {RUN}"}, associations=[to_contact]))
    got = api.crm.objects.leads.basic_api.get_by_id(lead.id, properties=["hs_lead_name"])
    expect(got.properties.get("hs_lead_name") == f"SDK lead {RUN}", f"name {got.properties}")
    page = api.crm.objects.leads.basic_api.get_page(limit=10)
    expect(len(page.results) > 0, "no leads listed")
    return f"id={lead.id}; a bare lead refused with 400"


@check("crm.objects.basic_api object_type=leads create/get")
def _():
    from hubspot.crm.objects import AssociationSpec, PublicAssociationsForObject, PublicObjectId
    from hubspot.crm.objects import SimplePublicObjectInputForCreate as ObjCreate

    to_contact = PublicAssociationsForObject(
        to=PublicObjectId(id=lead_contact("generic")),
        types=[AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=578)],
    )
    lead = api.crm.objects.basic_api.create("leads", ObjCreate(properties={"hs_lead_name": f"SDK generic lead {RUN}"}, associations=[to_contact]))
    got = api.crm.objects.basic_api.get_by_id("leads", lead.id, properties=["hs_lead_name"])
    expect(got.id == lead.id, "id mismatch")


# --------------------------------------------------------------------------- oauth


def sandbox_code():
    req = urllib.request.Request(f"{BASE}/_sandbox/oauth/codes", data=json.dumps({"redirectUri": REDIRECT_URI}).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        return json.load(r)["code"]


oauth_api = client()  # no auth needed for token endpoints


@check("oauth.tokens_api.create authorization_code")
def _():
    tok = oauth_api.oauth.tokens_api.create(grant_type="authorization_code", code=sandbox_code(), redirect_uri=REDIRECT_URI, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    expect(tok.access_token and tok.refresh_token and tok.expires_in > 0, f"token {tok}")
    state["tok"] = tok


@check("oauth.tokens_api.create refresh_token")
def _():
    tok = oauth_api.oauth.tokens_api.create(grant_type="refresh_token", refresh_token=state["tok"].refresh_token, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=REDIRECT_URI)
    expect(tok.access_token and tok.access_token != state["tok"].access_token, "no new access token")
    state["tok2"] = tok


@check("oauth.access_tokens_api.get")
def _():
    info = oauth_api.oauth.access_tokens_api.get(state["tok2"].access_token)
    expect(info.hub_id == PORTAL_ID and info.app_id == APP_ID, f"hub_id={info.hub_id} app_id={info.app_id}")
    return f"scopes={len(info.scopes)} expires_in={info.expires_in}"


@check("oauth.refresh_tokens_api.get")
def _():
    info = oauth_api.oauth.refresh_tokens_api.get(state["tok2"].refresh_token)
    expect(info.hub_id == PORTAL_ID and info.client_id == CLIENT_ID, f"hub_id={info.hub_id} client_id={info.client_id}")


@check("OAuth access token works with the contacts API")
def _():
    page = client(access_token=state["tok2"].access_token).crm.contacts.basic_api.get_page(limit=1)
    expect(len(page.results) == 1, "no result")


# --------------------------------------------------------------------------- account info


@check("account-info/v3/details via HubSpot.api_request")
def _():
    r = api.api_request({"method": "GET", "path": "/account-info/v3/details"})
    expect(r.status_code == 200, f"status {r.status_code}: {r.text[:200]}")
    body = r.json()
    expect(body.get("portalId") == PORTAL_ID, f"portalId {body.get('portalId')}")
    want = {"portalId", "accountType", "timeZone", "companyCurrency", "additionalCurrencies", "utcOffset", "utcOffsetMilliseconds", "uiDomain", "dataHostingLocation"}
    expect(want <= set(body), f"missing {sorted(want - set(body))}")


# --------------------------------------------------------------------------- webhooks + signatures

received = []
got_event = threading.Event()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        received.append((self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()
        got_event.set()

    def log_message(self, *a):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()
TARGET = f"http://127.0.0.1:{server.server_address[1]}/hubspot/webhook"


@check("webhooks.settings_api.configure / get_all")
def _():
    s = dev.webhooks.settings_api.configure(APP_ID, SettingsChangeRequest(target_url=TARGET, throttling=ThrottlingSettings(max_concurrent_requests=10)))
    expect(s.target_url == TARGET, f"target {s.target_url}")
    got = dev.webhooks.settings_api.get_all(APP_ID)
    expect(got.target_url == TARGET and got.throttling.max_concurrent_requests == 10, f"settings {got}")


@check("webhooks.subscriptions_api.create / get_all / get_by_id")
def _():
    existing = dev.webhooks.subscriptions_api.get_all(APP_ID).results
    sub = next((s for s in existing if s.event_type == "contact.creation"), None)
    if sub is None:
        sub = dev.webhooks.subscriptions_api.create(APP_ID, SubscriptionCreateRequest(event_type="contact.creation", active=True))
    expect(sub.event_type == "contact.creation", f"eventType {sub.event_type}")
    listed = dev.webhooks.subscriptions_api.get_all(APP_ID)
    expect(any(s.id == sub.id for s in listed.results), "created subscription not listed")
    one = dev.webhooks.subscriptions_api.get_by_id(int(sub.id), APP_ID)
    expect(one.id == sub.id, "get_by_id mismatch")
    if not one.active:
        from hubspot.webhooks import SubscriptionPatchRequest

        dev.webhooks.subscriptions_api.update(int(sub.id), APP_ID, SubscriptionPatchRequest(active=True))
    state["sub_id"] = sub.id


@check("webhook delivered after contact create")
def _():
    got_event.clear()
    received.clear()
    obj = contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": f"sdk-hook-{RUN}@example.com"}))
    state["hook_contact"] = obj.id
    deadline = time.time() + 10
    while time.time() < deadline:
        for _path, _h, body in received:
            events = json.loads(body)
            if any(e.get("subscriptionType") == "contact.creation" and str(e.get("objectId")) == obj.id for e in events):
                return f"{len(received)} deliveries"
        time.sleep(0.05)
    raise AssertionError(f"no contact.creation event for {obj.id} within 10s ({len(received)} deliveries)")


def first_delivery():
    expect(received, "no delivery received")
    return received[0]


@check("Signature.is_valid v1")
def _():
    _path, headers, body = first_delivery()
    h = {k.lower(): v for k, v in headers.items()}
    expect(h.get("x-hubspot-signature-version") == "v1", f"version header {h.get('x-hubspot-signature-version')}")
    ok = Signature.is_valid(signature=h["x-hubspot-signature"], client_secret=CLIENT_SECRET, request_body=body.decode("utf-8"), signature_version="v1")
    expect(ok, "v1 signature mismatch")


@check("Signature.is_valid v3")
def _():
    _path, headers, body = first_delivery()
    h = {k.lower(): v for k, v in headers.items()}
    ok = Signature.is_valid(
        signature=h["x-hubspot-signature-v3"],
        client_secret=CLIENT_SECRET,
        request_body=body.decode("utf-8"),
        http_uri=TARGET,
        http_method="POST",
        signature_version="v3",
        timestamp=h["x-hubspot-request-timestamp"],
    )
    expect(ok, "v3 signature mismatch")


@check("webhook cleanup (archive subscription, clear settings)")
def _():
    if state.get("sub_id"):
        dev.webhooks.subscriptions_api.archive(int(state["sub_id"]), APP_ID)
    dev.webhooks.settings_api.clear(APP_ID)
    if state.get("hook_contact"):
        contacts.basic_api.archive(state["hook_contact"])


server.shutdown()
passed = sum(RESULTS)
failed = len(RESULTS) - passed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
