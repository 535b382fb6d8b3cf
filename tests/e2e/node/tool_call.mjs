// A tool call through the official OpenAI Node SDK, streamed: prints what the deltas add up
// to, as JSON, for tests/e2e/test_structured_outputs.py to check.
//   FERRY_URL=http://127.0.0.1:8080 FERRY_KEY=fy_... node tool_call.mjs MODEL
import OpenAI from "openai";

const client = new OpenAI({ baseURL: `${process.env.FERRY_URL}/v1`, apiKey: process.env.FERRY_KEY, maxRetries: 0 });
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 30 }, unit: { enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    },
  },
};
const stream = await client.chat.completions.create(
  {
    model: process.argv[2],
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
    tools: [weather],
    tool_choice: "required",
    max_tokens: 120,
    seed: 11,
    stream: true,
  },
  { headers: { "Cache-Control": "no-store" } },
);
const call = { id: null, name: null, arguments: "", deltas: 0, finish_reason: null };
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (!choice) continue;
  for (const delta of choice.delta.tool_calls ?? []) {
    call.deltas += 1;
    call.id ??= delta.id ?? null;
    call.name ??= delta.function?.name ?? null;
    call.arguments += delta.function?.arguments ?? "";
  }
  call.finish_reason = choice.finish_reason ?? call.finish_reason;
}
console.log(JSON.stringify(call));
