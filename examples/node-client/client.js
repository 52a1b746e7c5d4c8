#!/usr/bin/env node
// A Node.js client of the evaluator (`evaluator serve`), from nothing but the contract
// proto/proto/rfb/v1/evaluator.proto (loaded at run time with @grpc/proto-loader).
//
//   node client.js [--address HOST:PORT] [--token T] [--proto-dir DIR] COMMAND ...
//
//   list                                   the server's info and its models
//   send FILE --name N --dataset D [--arch A] [--mean m,m,m --std s,s,s] [--method M]
//                                          upload a .pt file (TorchScript, or a state dict with --arch)
//   evaluate MODEL [--attacks clean,pgd,aa] [--eps 8/255] [--per-class N] [--seed S]
//   run FILE --name N --dataset D [...]    all three: list, send, evaluate the upload
//
// Prints one JSON object on stdout (progress goes to stderr); exits 1 with the server's message
// on any error.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const CHUNK = 1 << 20; // the contract allows up to 4 MiB per chunk

function parseArgs(argv) {
  const options = {};
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg.startsWith("--")) {
      const [key, inline] = arg.slice(2).split(/=(.*)/s);
      if (inline !== undefined) {
        options[key] = inline;
      } else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) {
        options[key] = argv[++i];
      } else {
        throw new Error(`--${key} needs a value`);
      }
    } else {
      positional.push(arg);
    }
  }
  return { options, positional };
}

function parseEps(text) {
  if (text === undefined) return undefined;
  const [num, den] = String(text).split("/");
  const value = den === undefined ? Number(num) : Number(num) / Number(den);
  if (!Number.isFinite(value) || value < 0 || value > 1) throw new Error(`eps ${text}: a number or fraction in [0, 1]`);
  return value;
}

function numbers(text) {
  return text === undefined ? [] : String(text).split(",").map(Number);
}

function connect(options) {
  const protoDir = options["proto-dir"] || process.env.RFB_PROTO_DIR || path.join(__dirname, "..", "..", "proto", "proto");
  const definition = protoLoader.loadSync("rfb/v1/evaluator.proto", {
    includeDirs: [protoDir],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const rfb = grpc.loadPackageDefinition(definition).rfb.v1;
  const address = options.address || "127.0.0.1:50051";
  const credentials = options.tls ? grpc.credentials.createSsl(fs.readFileSync(options.tls)) : grpc.credentials.createInsecure();
  const client = new rfb.Evaluator(address, credentials, {
    "grpc.max_receive_message_length": 64 << 20,
  });
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set("authorization", `Bearer ${options.token}`);
  return { client, metadata };
}

// A gRPC error as the server said it.
function failure(call, error) {
  const code = grpc.status[error.code] || error.code;
  return new Error(`${call}: ${code}: ${error.details || error.message}`);
}

function unary(ctx, method, request) {
  return new Promise((resolve, reject) => {
    ctx.client[method](request, ctx.metadata, (error, answer) => (error ? reject(failure(method, error)) : resolve(answer)));
  });
}

// The file's name as the server records it, as the Python client makes it: characters other
// than letters, digits, '_', '+', '.' and '-' become '_', leading dots go, at most 128 bytes.
function safeFileName(file) {
  const name = path.basename(file).replace(/[^A-Za-z0-9_+.-]+/g, "_").replace(/^\.+/, "");
  return name.slice(0, 128) || "upload";
}

async function sha256OfFile(file) {
  const hash = crypto.createHash("sha256");
  for await (const block of fs.createReadStream(file)) hash.update(block);
  return hash.digest("hex");
}

async function send(ctx, file, options) {
  if (!options.name || !options.dataset) throw new Error("send needs --name and --dataset");
  const size = fs.statSync(file).size;
  const sha256 = await sha256OfFile(file);
  const started = process.hrtime.bigint();
  const info = await new Promise((resolve, reject) => {
    let stream = null;
    // The server may answer before the last chunk (a refusal): then stop reading and writing.
    let answered = false;
    const call = ctx.client.UploadModel(ctx.metadata, (error, answer) => {
      answered = true;
      if (stream) stream.destroy();
      if (error) reject(failure("UploadModel", error));
      else resolve(answer);
    });
    call.write({
      header: {
        name: options.name,
        dataset: options.dataset,
        format: options.arch ? "MODEL_FORMAT_STATE_DICT" : "MODEL_FORMAT_UNSPECIFIED",
        architecture: options.arch || "",
        mean: numbers(options.mean),
        std: numbers(options.std),
        class_names: [],
        method: options.method || "imported",
        size,
        sha256,
        file_name: safeFileName(file),
      },
    });
    stream = fs.createReadStream(file, { highWaterMark: CHUNK });
    stream.on("data", (chunk) => {
      if (answered) return;
      if (!call.write({ chunk })) {
        stream.pause();
        call.once("drain", () => {
          if (!answered) stream.resume();
        });
      }
    });
    stream.on("end", () => {
      if (answered) return;
      call.end();
      process.stderr.write("sent; the server is checking the model\n");
    });
    stream.on("error", (error) => {
      if (answered) return;
      call.cancel();
      reject(error);
    });
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { ...info, upload_bytes: size, upload_seconds: seconds };
}

function evaluate(ctx, model, options) {
  const request = {
    model,
    examples_per_class: Number(options["per-class"] || 0),
    attack_names: options.attacks || "clean,pgd,aa",
    seed: Number(options.seed || 0),
  };
  const eps = parseEps(options.eps);
  if (eps !== undefined) request.eps = eps;
  const stepSize = parseEps(options["step-size"]);
  if (stepSize !== undefined) request.step_size = stepSize;
  return new Promise((resolve, reject) => {
    const results = [];
    let done = null;
    const call = ctx.client.Evaluate(request, ctx.metadata);
    call.on("data", (event) => {
      if (event.event === "progress") {
        const p = event.progress;
        process.stderr.write(`\r${p.attack} ${p.component}: ${p.examples_done}/${p.examples_total}   `);
      } else if (event.event === "queued") {
        process.stderr.write(`\rqueued, ${event.queued.ahead} job(s) ahead   `);
      } else if (event.event === "result") {
        const r = event.result;
        results.push({
          attack: r.attack_name,
          spec: r.attack,
          classes: r.classes.map((c) => ({ class: c.class_name, correct: c.correct, total: c.total })),
          metrics: r.metrics,
          sanity: r.sanity || null,
          components: r.components,
          cached: r.cached,
          elapsed_seconds: r.elapsed_seconds,
          device: r.device,
          weights_sha256: r.weights_sha256,
          dataset: r.dataset,
          versions: r.versions,
        });
      } else if (event.event === "done") {
        done = event.done.elapsed_seconds;
      }
    });
    call.on("error", (error) => reject(failure("Evaluate", error)));
    call.on("end", () => {
      process.stderr.write("\n");
      if (done === null) reject(new Error("Evaluate: the stream ended without Done"));
      else resolve({ model, attacks: results, elapsed_seconds: done });
    });
  });
}

async function list(ctx) {
  const info = await unary(ctx, "ServerInfo", {});
  const models = await unary(ctx, "ListModels", {});
  return { server: info, models: models.models.map((m) => m.name), problems: models.problems };
}

async function main() {
  const { options, positional } = parseArgs(process.argv.slice(2));
  const [command, target] = positional;
  const ctx = connect(options);
  let output;
  if (command === "list") {
    output = await list(ctx);
  } else if (command === "send") {
    output = await send(ctx, target, options);
  } else if (command === "evaluate") {
    output = await evaluate(ctx, target, options);
  } else if (command === "run") {
    const before = await list(ctx);
    const uploaded = await send(ctx, target, options);
    const result = await evaluate(ctx, uploaded.name, options);
    output = { models_before: before.models, uploaded, result };
  } else {
    throw new Error("usage: node client.js [--address HOST:PORT] [--token T] list | send FILE ... | evaluate MODEL ... | run FILE ...");
  }
  ctx.client.close();
  process.stdout.write(JSON.stringify(output) + "\n");
}

main().catch((error) => {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(1);
});
