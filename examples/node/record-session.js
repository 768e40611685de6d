#!/usr/bin/env node
// Records one pipeline run with ProcessFlow from Node.js, then reads it back.
//
//   node record-session.js [HOST:PORT]      (or PROCESSFLOW_TARGET; default 127.0.0.1:50051)
//
// The .proto files are loaded at run time from ../../protos (no generated
// code). The channel uses the recommended service config (retry only
// UNAVAILABLE, bounded backoff, 5 s deadlines), and every mutating call
// carries a request_id chosen once per call, so a retried call has one effect.
// Exits non-zero on any failure.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO = path.resolve(__dirname, '..', '..');
const PROTO_ROOT = path.join(REPO, 'protos');
const SERVICE_CONFIG = path.join(REPO, 'processflow', 'client', 'service_config.json');
const DEADLINE_MS = 5000;

function loadClient(target) {
  const definition = protoLoader.loadSync('processflow/v1/processflow_service.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { ProcessFlowService } = grpc.loadPackageDefinition(definition).processflow.v1;
  const serviceConfig = fs.readFileSync(SERVICE_CONFIG, 'utf8');
  return new ProcessFlowService(target, grpc.credentials.createInsecure(), {
    'grpc.enable_retries': 1,
    'grpc.service_config': serviceConfig,
  });
}

// One unary call with a deadline, as a promise.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (error, response) => {
      if (error) {
        reject(new Error(`${method} failed: ${grpc.status[error.code]}: ${error.details}`));
      } else {
        resolve(response);
      }
    });
  });
}

function timestamp(date = new Date()) {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

// Records a step as running, runs body(stepId), then records how it ended.
async function step(client, sessionId, code, parentStepId, body, finish = {}) {
  const stepId = `${code}-${crypto.randomUUID().slice(0, 8)}`;
  await call(client, 'RecordStep', {
    request_id: crypto.randomUUID(),
    session_id: sessionId,
    step_id: stepId,
    step_type: code,
    parent_step_id: parentStepId,
    status: 'STEP_STATUS_RUNNING',
    start_time: timestamp(),
  });
  if (body) {
    await body(stepId);
  }
  await call(client, 'RecordStep', {
    request_id: crypto.randomUUID(),
    session_id: sessionId,
    step_id: stepId,
    status: 'STEP_STATUS_COMPLETED',
    end_time: timestamp(),
    ...finish,
  });
  return stepId;
}

function countSteps(steps) {
  return steps.reduce((total, s) => total + 1 + countSteps(s.children), 0);
}

async function main() {
  const target = process.argv[2] || process.env.PROCESSFLOW_TARGET || '127.0.0.1:50051';
  const client = loadClient(target);
  const sessionId = crypto.randomUUID();
  const query = 'Show me total sales by region for last quarter';
  const sql =
    'SELECT r.RegionName, SUM(s.Amount) AS TotalSales FROM Sales s ' +
    'JOIN Regions r ON s.RegionId = r.Id ' +
    'WHERE s.SaleDate >= DATEADD(quarter, -1, GETDATE()) GROUP BY r.RegionName';
  const prompt = `Schema: Sales(Id, Amount, SaleDate, RegionId), Regions(Id, RegionName)\nQuestion: ${query}`;

  try {
    await call(client, 'StartSession', {
      request_id: crypto.randomUUID(),
      session_id: sessionId,
      user_id: 'node.example@company.com',
      query,
      intent: 'aggregation',
      domain: 'sales',
      template: 'sales_aggregation',
      tables_retrieved: ['Sales', 'Regions'],
      start_time: timestamp(),
    });

    await step(client, sessionId, 'auth', '', null, {
      confidence: 1.0,
      logs: [{ level: 'LOG_LEVEL_INFO', message: 'token valid', source: 'node-example' }],
    });
    await step(
      client,
      sessionId,
      'prompt-building',
      '',
      async (parent) => {
        await step(client, sessionId, 'context-gathering', parent, null, {
          logs: [{ level: 'LOG_LEVEL_INFO', message: 'found 2 tables' }],
        });
      },
      { output_data: prompt, tokens_used: 42, confidence: 0.95 },
    );
    await step(client, sessionId, 'ai-generation', '', async (stepId) => {
      await call(client, 'RecordLlmCall', {
        request_id: crypto.randomUUID(),
        session_id: sessionId,
        step_id: stepId,
        call_id: crypto.randomUUID(),
        provider: 'openai',
        model: 'gpt-4o',
        prompt_text: prompt,
        response_text: sql,
        input_tokens: 1250,
        output_tokens: 180,
        cost_usd: 0.00895,
        duration_ms: 1420,
        call_time: timestamp(),
      });
    }, {
      output_data: sql,
      logs: [{ level: 'LOG_LEVEL_WARNING', message: 'response needed trimming' }],
    });
    await call(client, 'CompleteSession', {
      request_id: crypto.randomUUID(),
      session_id: sessionId,
      status: 'SESSION_STATUS_COMPLETED',
      generated_sql: sql,
      overall_confidence: 0.9,
      end_time: timestamp(),
    });

    const { session } = await call(client, 'GetSession', { session_id: sessionId });
    const steps = countSteps(session.steps);
    const t = session.transparency || {};
    console.log(`session ${session.session_id}: ${session.status}`);
    console.log(`  user ${session.user_id}, ${steps} steps, ${session.llm_calls.length} LLM call(s)`);
    console.log(`  tokens ${t.total_tokens || 0}, cost $${Number(t.estimated_cost_usd || 0).toFixed(6)}`);
    console.log(`  legacy coverage: ${session.coverage ? session.coverage.status : 'unknown'}`);
    const problems = [];
    if (session.status !== 'SESSION_STATUS_COMPLETED') problems.push(`status ${session.status}`);
    if (steps !== 4) problems.push(`${steps} steps instead of 4`);
    if (session.llm_calls.length !== 1) problems.push(`${session.llm_calls.length} LLM calls instead of 1`);
    if (problems.length > 0) {
      throw new Error(`the session read back is not what was recorded: ${problems.join(', ')}`);
    }
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`record-session: ${error.message}`);
  process.exit(1);
});
