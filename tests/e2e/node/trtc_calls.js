// Runs a list of TRTC cloud-recording calls through Tencent's unmodified
// Node.js SDK and prints one JSON line per call: {"ok": response} or
// {"error": {"code", "message"}}. Used by tests/e2e/test_nodejs_sdk.py.
//
//   node trtc_calls.js ENDPOINT SECRET_ID SECRET_KEY CALLS_JSON
//
// ENDPOINT is host:port as a user would write it (no scheme); CALLS_JSON is
// [[action, params], ...]; a params value "$TASK" is replaced by the TaskId
// of the latest successful CreateCloudRecording.
"use strict";
const tencentcloud = require("tencentcloud-sdk-nodejs");

async function main() {
  const [endpoint, secretId, secretKey, callsJson] = process.argv.slice(2);
  const client = new tencentcloud.trtc.v20190722.Client({
    credential: { secretId, secretKey },
    region: "ap-shanghai",
    profile: { httpProfile: { endpoint, protocol: "http://", reqTimeout: 10 } },
  });
  let task = null;
  for (const [action, params] of JSON.parse(callsJson)) {
    const p = JSON.parse(JSON.stringify(params), (k, v) => (v === "$TASK" ? task : v));
    try {
      const r = await client[action](p);
      if (action === "CreateCloudRecording") task = r.TaskId;
      console.log(JSON.stringify({ action, ok: r }));
    } catch (e) {
      console.log(JSON.stringify({ action, error: { code: e.code || null, message: e.message || String(e) } }));
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
