// A gRPC-shaped exchange with Node's own HTTP/2 client (nghttp2 inside), run by
// tests/grpc/test_http2.py: COUNT concurrent calls with a 100-byte stream window and no
// HPACK dynamic table; prints one JSON line with what each call received.
"use strict";
const http2 = require("http2");
const [url, path, bodyHex, count] = process.argv.slice(2);
const client = http2.connect(url, {
  settings: { initialWindowSize: 100, headerTableSize: 0, enablePush: false },
});
const results = [];
let pending = Number(count);
for (let i = 0; i < Number(count); i++) {
  const request = client.request({
    ":method": "POST",
    ":path": path,
    "content-type": "application/grpc",
    te: "trailers",
  });
  const chunks = [];
  const result = { status: null, size: 0, grpcStatus: null };
  request.on("response", (headers) => { result.status = headers[":status"]; });
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("trailers", (trailers) => { result.grpcStatus = trailers["grpc-status"]; });
  request.on("error", (error) => { result.error = String(error); });
  request.on("close", () => {
    result.size = Buffer.concat(chunks).length;
    results.push(result);
    if (--pending === 0) {
      console.log(JSON.stringify(results));
      client.close();
    }
  });
  request.end(Buffer.from(bodyHex, "hex"));
}
