// UnivaPay's official Node SDK (univapay-node) against univapay-sim: the seed flow and
// every read the reconciler relies on, made through the SDK, each answer validated
// against a JSON Schema generated from the SDK's own TypeScript declarations
// (node_modules/univapay-node/dist/cjs/**/*.d.ts, via sdk-types.ts). The SDK converts
// the JSON to camelCase and returns it as is, so "the SDK parses it" means: every field
// it declares has the declared type, every field it requires is there. Fields the SDK
// does not declare are allowed (it ignores them, and the real API sends some).
//
// Usage: UNIVAPAY_SIM_URL=http://127.0.0.1:PORT node check.mjs
// (secret and app token: UNIVAPAY_SECRET / UNIVAPAY_APPLICATION_JWT, default the
// simulator's own defaults). Exit 0 when every check passed, 1 otherwise.

import { fileURLToPath } from "node:url";
import path from "node:path";

import Ajv from "ajv";
import tsj from "ts-json-schema-generator";
import SDK from "univapay-node";

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.env.UNIVAPAY_SIM_URL;
if (!base) {
  console.error("check.mjs: UNIVAPAY_SIM_URL is not set (the simulator's base URL)");
  process.exit(2);
}
const secret = process.env.UNIVAPAY_SECRET ?? "sim-secret";
const jwt =
  process.env.UNIVAPAY_APPLICATION_JWT ??
  "eyJhbGciOiJIUzI1NiJ9.eyJhcHBfaWQiOiJzaW0ifQ.c2lnbmF0dXJl";

// Where the SDK declares a non-null type but UnivaPay's API documentation of the charge
// object says the real API answers `null`:
// `charged_*` until the charge is processed; `descriptor`, `capture_at`,
// `subscription_id` "string or null"; `error` "null, missing, {} or {...}". The
// simulator answers as the API does there; every other field must match the SDK.
const NULL_PER_API_DOCS = {
  Charge: [
    "chargedAmount",
    "chargedCurrency",
    "chargedAmountFormatted",
    "descriptor",
    "captureAt",
    "subscriptionId",
    "error",
  ],
};

function schemaFor(type) {
  const generator = tsj.createGenerator({
    path: path.join(here, "sdk-types.ts"),
    tsconfig: path.join(here, "tsconfig.json"),
    type,
    expose: "none",
    topRef: false,
    additionalProperties: true,
    skipTypeCheck: true,
  });
  return generator.createSchema(type);
}

function allowNull(schema, fields) {
  for (const f of fields) {
    const props = schema.properties;
    if (!props?.[f]) throw new Error(`the SDK no longer declares ${f}: revisit NULL_PER_API_DOCS`);
    props[f] = { anyOf: [props[f], { type: "null" }] };
  }
  return schema;
}

const ajv = new Ajv({ allErrors: true, strict: false });
const validators = {};
for (const type of ["Charge", "ChargeList", "Expiry", "KonbiniToken", "CardToken", "ApiError"]) {
  const schema = schemaFor(type);
  allowNull(schema, NULL_PER_API_DOCS[type] ?? []);
  if (type === "ChargeList") {
    allowNull(schema.properties.items.items, NULL_PER_API_DOCS.Charge);
  }
  validators[type] = ajv.compile(schema);
}

let failures = 0;
let passes = 0;
function check(name, ok, detail) {
  if (ok) {
    passes += 1;
    console.log(`ok    ${name}`);
  } else {
    failures += 1;
    console.log(`FAIL  ${name}${detail ? `\n      ${detail}` : ""}`);
  }
}

function conforms(name, type, value) {
  const v = validators[type];
  const ok = v(value);
  const detail = ok
    ? ""
    : v.errors
        .slice(0, 8)
        .map((e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`)
        .join("\n      ");
  check(`${name} parses as the SDK's ${type}`, ok, detail);
  return value;
}

async function step(name, f) {
  try {
    return await f();
  } catch (e) {
    const resp = e?.errorResponse ? ` ${JSON.stringify(e.errorResponse)}` : "";
    check(name, false, `${e?.name ?? "Error"}: ${e?.message ?? e}${resp}`);
    return undefined;
  }
}

const sdk = new SDK({ endpoint: base, jwt, secret });

// 1. The seed flow: a konbini transaction token, then a charge with an idempotency key.
const token = await step("create a konbini token", () =>
  sdk.transactionTokens.create({
    paymentType: "konbini",
    type: "one_time",
    email: "customer@example.com",
    data: {
      customerName: "Yamada Taro",
      convenienceStore: "seven_eleven",
      phoneNumber: { countryCode: "81", localNumber: "0312345678" },
      expirationPeriod: "P7D",
    },
    metadata: { orderid: "12345" },
  }),
);
if (token) {
  conforms("POST /tokens", "KonbiniToken", token);
  check("the token is a konbini token", token.paymentType === "konbini", token.paymentType);
}

const create = () =>
  sdk.charges.create(
    { transactionTokenId: token.id, amount: 1200, currency: "JPY", metadata: { orderid: "12345" } },
    { idempotentKey: "conformance-charge-1" },
  );
const charge = token && (await step("create a charge", create));
if (charge) {
  conforms("POST /charges", "Charge", charge);
  check("the new charge is pending", charge.status === "pending", charge.status);
  check("the charge keeps its metadata", charge.metadata?.orderid === "12345", JSON.stringify(charge.metadata));
  const again = await step("create the charge again, same key", create);
  check("an idempotent retry answers the same charge", again?.id === charge.id, again?.id);
}

// 2. Reading it back: the plain GET, `polling=true`, the SDK's poll, the token, the expiry.
if (charge) {
  const store = charge.storeId;
  const read = await step("GET the charge", () => sdk.charges.get(store, charge.id));
  if (read) {
    conforms("GET /stores/{sid}/charges/{id}", "Charge", read);
    check("the read charge is the created one", read.id === charge.id, read.id);
  }
  const started = Date.now();
  const held = await step("GET the charge with polling=true", () =>
    sdk.charges.get(store, charge.id, { polling: true }),
  );
  if (held) {
    conforms("GET .../charges/{id}?polling=true", "Charge", held);
    check(
      "polling=true answers once the charge left pending",
      held.status === "awaiting",
      `${held.status} after ${Date.now() - started} ms`,
    );
  }
  const polled = await step("the SDK's charges.poll", () =>
    sdk.charges.poll(store, charge.id, undefined, undefined, { timeout: 20000, interval: 500 }),
  );
  if (polled) {
    conforms("charges.poll", "Charge", polled);
    check("charges.poll ends on awaiting", polled.status === "awaiting", polled.status);
    const number = polled.metadata?.internal_convenience_payment_number;
    check("an awaiting konbini charge carries its payment number", typeof number === "string", String(number));
  }
  const tok = await step("GET the token", () => sdk.transactionTokens.get(store, token.id));
  if (tok) {
    conforms("GET /stores/{sid}/tokens/{id}", "KonbiniToken", tok);
    check("the token's brand", tok.data?.convenienceStore === "seven_eleven", tok.data?.convenienceStore);
  }
  const exp = await step("GET the charge's expiry", () =>
    sdk.charges.expiry(charge.id, undefined, undefined, store),
  );
  if (exp) {
    conforms("GET .../charges/{id}/expiry/latest", "Expiry", exp);
    check("the expiry names the charge", exp.chargeId === charge.id, exp.chargeId);
  }
}

// 3. Listing: a store's charges page by page, and the merchant-wide list; every charge
// found is read back, with its token.
async function allPages(name, list) {
  const items = [];
  let cursor;
  for (let page = 0; page < 50; page += 1) {
    const resp = await step(name, () => list({ limit: 25, ...(cursor ? { cursor } : {}) }));
    if (!resp) break;
    conforms(`${name} page ${page + 1}`, "ChargeList", resp);
    items.push(...resp.items);
    if (!resp.hasMore || resp.items.length === 0) return items;
    cursor = resp.items[resp.items.length - 1].id;
  }
  return items;
}

const merchantWide = await allPages("GET /charges", (q) => sdk.charges.list(q));
const stores = [...new Set([charge?.storeId, ...merchantWide.map((c) => c.storeId)])].filter(Boolean);
const merchantStores = new Set(merchantWide.map((c) => c.storeId)).size;
check("the merchant-wide list spans several stores", merchantStores > 1, `${merchantStores} store(s)`);
if (charge) {
  check("the merchant-wide list holds the new charge", merchantWide.some((c) => c.id === charge.id));
}
let perStore = 0;
for (const store of stores) {
  const items = await allPages(`GET /stores/{sid}/charges (${store})`, (q) =>
    sdk.charges.list(q, undefined, store),
  );
  perStore += items.length;
  check(`every item of ${store} is of that store`, items.every((c) => c.storeId === store));
}
check("the store lists add up to the merchant-wide one", perStore === merchantWide.length, `${perStore} vs ${merchantWide.length}`);

const statuses = new Set();
for (const item of merchantWide) {
  const c = await step(`GET charge ${item.id}`, () => sdk.charges.get(item.storeId, item.id));
  if (!c) continue;
  statuses.add(c.status);
  conforms(`GET charge (${c.status})`, "Charge", c);
  const t = await step(`GET token ${c.transactionTokenId}`, () =>
    sdk.transactionTokens.get(c.storeId, c.transactionTokenId),
  );
  if (t) conforms(`GET token (${t.paymentType})`, t.paymentType === "card" ? "CardToken" : "KonbiniToken", t);
}
console.log(`      statuses seen: ${[...statuses].sort().join(", ")}`);

// 4. Errors: a charge that does not exist is the SDK's error with UnivaPay's error body.
try {
  await sdk.charges.get(stores[0] ?? "none", "00000000-0000-0000-0000-000000000000");
  check("an unknown charge is an error", false, "answered 2xx");
} catch (e) {
  const body = e?.errorResponse;
  check("an unknown charge is a 404 NOT_FOUND", body?.httpCode === 404 && body?.code === "NOT_FOUND", JSON.stringify(body));
  if (body) conforms("a 404", "ApiError", body);
}

console.log(`\n${passes} passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
