#include "server/openai_protocol.h"

#include <gtest/gtest.h>

#include <map>

namespace baton::openai {
namespace {

// The request a body parses into; a refusal fails the test with its message.
ApiRequest accepted(std::string_view body, Endpoint endpoint = Endpoint::kCompletions) {
  auto r = parse_request(body, endpoint);
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << " was refused: " << e->message;
    return {};
  }
  return std::get<ApiRequest>(std::move(r));
}

// The refusal a body gets; an accepted body fails the test.
ApiError refused(std::string_view body, Endpoint endpoint = Endpoint::kCompletions) {
  auto r = parse_request(body, endpoint);
  if (!std::holds_alternative<ApiError>(r)) {
    ADD_FAILURE() << body << " was accepted";
    return {};
  }
  return std::get<ApiError>(std::move(r));
}

// A body the parser must refuse: a 400 naming `param` (empty: the body as a whole), with a
// message containing `says`.
struct Refusal {
  std::string body;
  std::string param;
  std::string says;
};

void expect_refusals(const std::vector<Refusal>& cases, Endpoint endpoint) {
  for (const auto& c : cases) {
    SCOPED_TRACE(c.body);
    const ApiError e = refused(c.body, endpoint);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_EQ(e.param, c.param);
    EXPECT_NE(e.message.find(c.says), std::string::npos) << e.message;
  }
}

// A completions body: the prompt "hi" and `fields` (a JSON object's members, without braces).
std::string completion_with(const std::string& fields) {
  return R"({"prompt":"hi",)" + fields + "}";
}
std::string chat_with(const std::string& fields) {
  return R"({"messages":[{"role":"user","content":"hi"}],)" + fields + "}";
}

// Refusals whose `body` holds only the fields added to a valid request of the endpoint.
void expect_field_refusals(std::vector<Refusal> cases, Endpoint endpoint) {
  for (auto& c : cases) c.body = endpoint == Endpoint::kChat ? chat_with(c.body) : completion_with(c.body);
  expect_refusals(cases, endpoint);
}

TEST(OpenAiRequestTest, BodyMustBeUtf8JsonObject) {
  expect_refusals({{"", "", "the request body"},
                   {"{", "", "the request body"},
                   {R"({"prompt":"hi",})", "", "the request body"},
                   {"\xff", "", "not valid UTF-8"},
                   {"{\"prompt\":\"\xc3\"}", "", "not valid UTF-8"},
                   {"[]", "", "must be a JSON object"},
                   {"5", "", "must be a JSON object"},
                   {R"("prompt")", "", "must be a JSON object"},
                   {"null", "", "must be a JSON object"},
                   {R"({"prompt":)" + std::string(1000, '[') + std::string(1000, ']') + "}", "", "nested deeper"}},
                  Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, CompletionDefaults) {
  const ApiRequest r = accepted(R"({"prompt":"hi"})");
  EXPECT_EQ(r.endpoint, Endpoint::kCompletions);
  EXPECT_EQ(r.model, "");
  EXPECT_EQ(r.params.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_EQ(r.params.temperature, 1.0f);
  EXPECT_EQ(r.params.top_p, 1.0f);
  EXPECT_EQ(r.params.top_k, 0);
  EXPECT_EQ(r.params.logprobs, -1);
  EXPECT_FALSE(r.params.seed.has_value());
  EXPECT_TRUE(r.params.stop.empty());
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.return_token_ids);
  EXPECT_TRUE(r.kv_transfer_params.is_null());
  // null is the same as absent.
  const ApiRequest nulls = accepted(
      R"({"prompt":"hi","model":null,"temperature":null,"max_tokens":null,"stop":null,"stream":null,"n":null})");
  EXPECT_EQ(nulls.params.temperature, 1.0f);
  EXPECT_EQ(nulls.params.max_tokens, 16);
  EXPECT_TRUE(nulls.params.stop.empty());
}

TEST(OpenAiRequestTest, PromptForms) {
  const ApiRequest text = accepted(R"({"prompt":"hello"})");
  ASSERT_EQ(text.prompts.size(), 1u);
  EXPECT_EQ(std::get<std::string>(text.prompts[0]), "hello");

  const ApiRequest texts = accepted(R"({"prompt":["a","b"]})");
  ASSERT_EQ(texts.prompts.size(), 2u);
  EXPECT_EQ(std::get<std::string>(texts.prompts[1]), "b");

  const ApiRequest ids = accepted(R"({"prompt":[1,2,3]})");
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_EQ(std::get<std::vector<int>>(ids.prompts[0]), (std::vector<int>{1, 2, 3}));

  const ApiRequest id_lists = accepted(R"({"prompt":[[1,2],[2147483647]]})");
  ASSERT_EQ(id_lists.prompts.size(), 2u);
  EXPECT_EQ(std::get<std::vector<int>>(id_lists.prompts[0]), (std::vector<int>{1, 2}));
  EXPECT_EQ(std::get<std::vector<int>>(id_lists.prompts[1]), (std::vector<int>{2147483647}));

  const ApiRequest mixed = accepted(R"({"prompt":["a",[7]]})");
  ASSERT_EQ(mixed.prompts.size(), 2u);
  EXPECT_EQ(std::get<std::string>(mixed.prompts[0]), "a");
  EXPECT_EQ(std::get<std::vector<int>>(mixed.prompts[1]), std::vector<int>{7});

  std::string many = R"({"prompt":[)";
  for (int i = 0; i < 256; ++i) many += std::string(i ? "," : "") + "\"p\"";
  EXPECT_EQ(accepted(many + "]}").prompts.size(), 256u);
  expect_refusals({{many + R"(,"p"]})", "prompt", "at most 256"}}, Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, BadPromptsNameThePrompt) {
  expect_refusals({{"{}", "prompt", "required"},
                   {R"({"prompt":null})", "prompt", "required"},
                   {R"({"prompt":""})", "prompt", "must not be empty"},
                   {R"({"prompt":[]})", "prompt", "non-empty"},
                   {R"({"prompt":[[]]})", "prompt", "must not be empty"},
                   {R"({"prompt":["a",""]})", "prompt", "must not be empty"},
                   {R"({"prompt":5})", "prompt", "'prompt' must be"},
                   {R"({"prompt":{"text":"hi"}})", "prompt", "'prompt' must be"},
                   {R"({"prompt":[true]})", "prompt", "'prompt' must be"},
                   {R"({"prompt":["a",5]})", "prompt", "'prompt' must be"},
                   {R"({"prompt":[1,"a"]})", "prompt", "must be integers"},
                   {R"({"prompt":[1.5]})", "prompt", "must be integers"},
                   {R"({"prompt":[[1],["a"]]})", "prompt", "must be integers"},
                   {R"({"prompt":[-1]})", "prompt", "token id -1 is out of range"},
                   {R"({"prompt":[2147483648]})", "prompt", "token id 2147483648 is out of range"}},
                  Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, ChatMessages) {
  const ApiRequest r = accepted(R"({"messages":[
      {"role":"system","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"one "},{"type":"text","text":"two"}]},
      {"role":"assistant","content":null,"tool_calls":[{"id":"c1"}]},
      {"role":"tool"}]})",
                                Endpoint::kChat);
  EXPECT_EQ(r.endpoint, Endpoint::kChat);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0]["content"], "be brief");
  EXPECT_EQ(r.messages[1]["content"], "one two");         // text parts joined
  EXPECT_EQ(r.messages[2]["content"], "");                // null and absent content read as ""
  EXPECT_EQ(r.messages[2]["tool_calls"][0]["id"], "c1");  // the rest of a message is kept
  EXPECT_EQ(r.messages[3]["content"], "");
  EXPECT_EQ(r.messages[3]["role"], "tool");
  // Chat has no default length: the server fills in what the context leaves.
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_TRUE(r.add_generation_prompt);
}

TEST(OpenAiRequestTest, BadMessagesNameTheMessages) {
  expect_refusals(
      {{"{}", "messages", "required"},
       {R"({"messages":[]})", "messages", "non-empty list"},
       {R"({"messages":null})", "messages", "non-empty list"},
       {R"({"messages":{"role":"user"}})", "messages", "non-empty list"},
       {R"({"messages":["hi"]})", "messages", "must be an object"},
       {R"({"messages":[{"content":"hi"}]})", "messages", "string 'role'"},
       {R"({"messages":[{"role":5,"content":"hi"}]})", "messages", "string 'role'"},
       {R"({"messages":[{"role":"user","content":5}]})", "messages", "string or a list of text parts"},
       {R"({"messages":[{"role":"user","content":{"text":"hi"}}]})", "messages", "string or a list"},
       {R"({"messages":[{"role":"user","content":["hi"]}]})", "messages", "only text content parts"},
       {R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})", "messages",
        "only text content parts"},
       {R"({"messages":[{"role":"user","content":[{"type":5,"text":"hi"}]}]})", "messages", "only text content parts"},
       {R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", "messages", "only text content parts"},
       {R"({"messages":[{"role":"user","content":[{"type":"text","text":1}]}]})", "messages",
        "only text content parts"}},
      Endpoint::kChat);
}

TEST(OpenAiRequestTest, SamplingParametersWithinRange) {
  const ApiRequest r = accepted(completion_with(
      R"("model":"m","max_tokens":5,"temperature":0,"top_p":0.5,"top_k":-1,"min_p":1,"presence_penalty":-2,)"
      R"("frequency_penalty":2,"repetition_penalty":1.5,"seed":42,"n":1,"best_of":1,"logit_bias":{},"echo":false,)"
      R"("ignore_eos":true,"skip_special_tokens":false,"include_stop_str_in_output":true,"user":"u")"));
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.params.max_tokens, 5);
  EXPECT_EQ(r.params.temperature, 0.0f);
  EXPECT_EQ(r.params.top_p, 0.5f);
  EXPECT_EQ(r.params.top_k, -1);
  EXPECT_EQ(r.params.min_p, 1.0f);
  EXPECT_EQ(r.params.presence_penalty, -2.0f);
  EXPECT_EQ(r.params.frequency_penalty, 2.0f);
  EXPECT_EQ(r.params.repetition_penalty, 1.5f);
  EXPECT_EQ(r.params.seed, std::optional<uint64_t>(42));
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_FALSE(r.params.skip_special_tokens);
  EXPECT_TRUE(r.params.include_stop_str_in_output);
  // The bounds themselves are in range; an integral float is an integer.
  EXPECT_EQ(accepted(completion_with(R"("temperature":100,"top_p":1,"top_k":1048576)")).params.top_k, 1 << 20);
  EXPECT_EQ(accepted(completion_with(R"("max_tokens":2147483647)")).params.max_tokens, 2147483647);
  EXPECT_EQ(accepted(completion_with(R"("max_tokens":3.0)")).params.max_tokens, 3);
}

TEST(OpenAiRequestTest, MaxCompletionTokensWinsOverMaxTokens) {
  const ApiRequest chat = accepted(chat_with(R"("max_tokens":5,"max_completion_tokens":7)"), Endpoint::kChat);
  EXPECT_EQ(chat.params.max_tokens, 7);
  EXPECT_TRUE(chat.max_tokens_given);
  EXPECT_EQ(accepted(chat_with(R"("max_tokens":5,"max_completion_tokens":null)"), Endpoint::kChat).params.max_tokens,
            5);
  const ApiError e = refused(chat_with(R"("max_tokens":5,"max_completion_tokens":0)"), Endpoint::kChat);
  EXPECT_EQ(e.param, "max_completion_tokens");
}

TEST(OpenAiRequestTest, OutOfRangeAndMistypedParametersNameTheParameter) {
  expect_field_refusals(
      {{R"("model":5)", "model", "must be a string"},
       {R"("max_tokens":0)", "max_tokens", "must be in [1, 2147483647]"},
       {R"("max_tokens":-3)", "max_tokens", "must be in [1, "},
       {R"("max_tokens":2147483648)", "max_tokens", "must be in [1, "},
       {R"("max_tokens":1e300)", "max_tokens", "must be in [1, "},
       {R"("max_tokens":1.5)", "max_tokens", "must be an integer"},
       {R"("max_tokens":"16")", "max_tokens", "must be an integer"},
       {R"("temperature":-0.1)", "temperature", "'temperature' must be in [0.0, 100.0]"},
       {R"("temperature":100.5)", "temperature", "must be in"},
       {R"("temperature":"hot")", "temperature", "'temperature' must be a number"},
       {R"("temperature":true)", "temperature", "must be a number"},
       {R"("top_p":0)", "top_p", "'top_p' must be in"},
       {R"("top_p":1.01)", "top_p", "'top_p' must be in"},
       {R"("top_k":-2)", "top_k", "'top_k' must be in [-1, 1048576]"},
       {R"("top_k":1048577)", "top_k", "must be in"},
       {R"("top_k":0.5)", "top_k", "must be an integer"},
       {R"("min_p":-0.5)", "min_p", "must be in"},
       {R"("min_p":1.5)", "min_p", "must be in"},
       {R"("presence_penalty":-2.5)", "presence_penalty", "'presence_penalty' must be in [-2.0, 2.0]"},
       {R"("presence_penalty":"1")", "presence_penalty", "must be a number"},
       {R"("frequency_penalty":2.5)", "frequency_penalty", "'frequency_penalty' must be in"},
       {R"("repetition_penalty":0)", "repetition_penalty", "must be in"},
       {R"("repetition_penalty":101)", "repetition_penalty", "must be in"},
       {R"("seed":"42")", "seed", "'seed' must be an integer"},
       {R"("seed":1.5)", "seed", "must be an integer"},
       {R"("user":5)", "user", "'user' must be a string"},
       {R"("ignore_eos":1)", "ignore_eos", "'ignore_eos' must be true or false"},
       {R"("skip_special_tokens":"no")", "skip_special_tokens", "must be true or false"},
       {R"("include_stop_str_in_output":0)", "include_stop_str_in_output", "true or false"},
       {R"("return_token_ids":"yes")", "return_token_ids", "true or false"},
       {R"("stream":"true")", "stream", "'stream' must be true or false"}},
      Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, UnimplementedFeaturesAreRefusedByName) {
  expect_field_refusals({{R"("n":2)", "n", "only n = 1"},
                         {R"("n":0)", "n", "only n = 1"},
                         {R"("n":"1")", "n", "only n = 1"},
                         {R"("best_of":2)", "best_of", "only best_of = 1"},
                         {R"("best_of":"1")", "best_of", "only best_of = 1"},
                         {R"("logit_bias":{"1":5})", "logit_bias", "'logit_bias' is not supported"},
                         {R"("logit_bias":[])", "logit_bias", "not supported"},
                         {R"("echo":true)", "echo", "'echo' is not supported"},
                         {R"("echo":"yes")", "echo", "'echo' must be true or false"}},
                        Endpoint::kCompletions);
  expect_field_refusals({{R"("n":3)", "n", "only n = 1"}}, Endpoint::kChat);
}

// Pinned as it is: a field the parser does not know is ignored (as vLLM does), not refused.
TEST(OpenAiRequestTest, StopStringsAndTokenIds) {
  EXPECT_EQ(accepted(completion_with(R"("stop":"\n")")).params.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(accepted(completion_with(R"("stop":["a","bc"])")).params.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(accepted(completion_with(R"("stop":[])")).params.stop.empty());
  std::string sixteen = "[";
  for (int i = 0; i < 16; ++i) sixteen += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  EXPECT_EQ(accepted(completion_with(R"("stop":)" + sixteen + "]")).params.stop.size(), 16u);
  EXPECT_EQ(accepted(completion_with(R"("stop_token_ids":[2,7])")).params.stop_token_ids, (std::vector<int>{2, 7}));
  expect_field_refusals({{R"("stop":)" + sixteen + R"(,"x"])", "stop", "at most 16 stop strings"},
                         {R"("stop":"")", "stop", "non-empty"},
                         {R"("stop":["a",""])", "stop", "non-empty"},
                         {R"("stop":5)", "stop", "a string or a list of strings"},
                         {R"("stop":{"s":"x"})", "stop", "a string or a list of strings"},
                         {R"("stop":["a",1])", "stop", "a string or a list of strings"},
                         {R"("stop_token_ids":7)", "stop_token_ids", "a list of integers"},
                         {R"("stop_token_ids":[1.5])", "stop_token_ids", "a list of integers"},
                         {R"("stop_token_ids":["2"])", "stop_token_ids", "a list of integers"}},
                        Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, CompletionLogprobsIsACount) {
  EXPECT_EQ(accepted(completion_with(R"("logprobs":0)")).params.logprobs, 0);
  EXPECT_EQ(accepted(completion_with(R"("logprobs":20)")).params.logprobs, 20);
  expect_field_refusals({{R"("logprobs":21)", "logprobs", "'logprobs' must be in [0, 20]"},
                         {R"("logprobs":-1)", "logprobs", "must be in [0, 20]"},
                         {R"("logprobs":true)", "logprobs", "must be an integer"}},
                        Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, ChatLogprobsIsAFlagWithTopLogprobs) {
  const ApiRequest top = accepted(chat_with(R"("logprobs":true,"top_logprobs":3)"), Endpoint::kChat);
  EXPECT_TRUE(top.chat_logprobs);
  EXPECT_EQ(top.params.logprobs, 3);
  const ApiRequest chosen_only = accepted(chat_with(R"("logprobs":true)"), Endpoint::kChat);
  EXPECT_TRUE(chosen_only.chat_logprobs);
  EXPECT_EQ(chosen_only.params.logprobs, 0);
  const ApiRequest off = accepted(chat_with(R"("logprobs":false)"), Endpoint::kChat);
  EXPECT_FALSE(off.chat_logprobs);
  EXPECT_EQ(off.params.logprobs, -1);
  expect_field_refusals({{R"("logprobs":5)", "logprobs", "'logprobs' must be true or false"},
                         {R"("top_logprobs":2)", "top_logprobs", "needs 'logprobs': true"},
                         {R"("logprobs":false,"top_logprobs":2)", "top_logprobs", "needs 'logprobs': true"},
                         {R"("logprobs":true,"top_logprobs":21)", "top_logprobs", "must be in [0, 20]"},
                         {R"("logprobs":true,"top_logprobs":-1)", "top_logprobs", "must be in [0, 20]"}},
                        Endpoint::kChat);
}

TEST(OpenAiRequestTest, StreamAndIncludeUsage) {
  const ApiRequest plain = accepted(completion_with(R"("stream":true)"));
  EXPECT_TRUE(plain.stream);
  EXPECT_FALSE(plain.include_usage);
  const ApiRequest usage = accepted(completion_with(R"("stream":true,"stream_options":{"include_usage":true})"));
  EXPECT_TRUE(usage.stream);
  EXPECT_TRUE(usage.include_usage);
  EXPECT_FALSE(accepted(completion_with(R"("stream":true,"stream_options":{})")).include_usage);
  // Pinned as it is: stream_options without stream is accepted (vLLM refuses it); the server
  // only reads include_usage on a stream.
  const ApiRequest unstreamed = accepted(completion_with(R"("stream_options":{"include_usage":true})"));
  EXPECT_FALSE(unstreamed.stream);
  EXPECT_TRUE(unstreamed.include_usage);
  expect_field_refusals({{R"("stream":true,"stream_options":true)", "stream_options", "must be an object"},
                         {R"("stream":true,"stream_options":{"include_usage":"yes"})", "stream_options",
                          "'include_usage' must be true or false"}},
                        Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, ReturnTokenIdsAndKvTransferParamsPassThrough) {
  const ApiRequest r = accepted(completion_with(
      R"("return_token_ids":true,"kv_transfer_params":{"do_remote_decode":true,"blocks":[1,2],"peer":{"h":"x"}})"));
  EXPECT_TRUE(r.return_token_ids);
  EXPECT_EQ(r.kv_transfer_params, Json::parse(R"({"do_remote_decode":true,"blocks":[1,2],"peer":{"h":"x"}})"));
  EXPECT_TRUE(accepted(completion_with(R"("kv_transfer_params":null)")).kv_transfer_params.is_null());
  expect_field_refusals({{R"("kv_transfer_params":"x")", "kv_transfer_params", "must be an object"},
                         {R"("kv_transfer_params":[1])", "kv_transfer_params", "must be an object"}},
                        Endpoint::kCompletions);
}

TEST(OpenAiRequestTest, ChatTemplateInputs) {
  const ApiRequest r =
      accepted(chat_with(R"("add_generation_prompt":false,"chat_template_kwargs":{"enable_thinking":false},)"
                         R"("tools":[{"type":"function","function":{"name":"f"}}])"),
               Endpoint::kChat);
  EXPECT_FALSE(r.add_generation_prompt);
  EXPECT_EQ(r.chat_template_kwargs["enable_thinking"], false);
  ASSERT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.tools[0]["function"]["name"], "f");
  expect_field_refusals(
      {{R"("add_generation_prompt":1)", "add_generation_prompt", "true or false"},
       {R"("chat_template_kwargs":[1])", "chat_template_kwargs", "'chat_template_kwargs' must be an object"},
       {R"("tools":{"name":"f"})", "tools", "'tools' must be a list"}},
      Endpoint::kChat);
  // Completions have no template: its fields are not read there.
  const ApiRequest completion = accepted(completion_with(R"("tools":5,"add_generation_prompt":"x")"));
  EXPECT_TRUE(completion.tools.is_null());
}

TEST(OpenAiErrorTest, ErrorBodyShape) {
  ApiError e;
  e.message = "'top_p' must be in [1e-09, 1.0]";
  e.param = "top_p";
  const Json j = Json::parse(error_body(e));
  EXPECT_EQ(j, Json::parse(R"({"error":{"message":"'top_p' must be in [1e-09, 1.0]","type":"invalid_request_error",)"
                           R"("param":"top_p","code":400}})"));
  ApiError server;
  server.status = 503;
  server.type = "server_error";
  server.message = "overloaded";
  const Json s = Json::parse(error_body(server));
  EXPECT_TRUE(s["error"]["param"].is_null());
  EXPECT_EQ(s["error"]["code"], 503);
  EXPECT_EQ(s["error"]["type"], "server_error");
  // A message carrying a client's invalid UTF-8 still gives valid JSON.
  ApiError bytes;
  bytes.message = "bad \xff byte";
  EXPECT_NO_THROW(Json::parse(error_body(bytes)));
}

// Token texts of different byte lengths, so offsets and bytes are visible.
std::string token_text_of(int id) {
  static const std::map<int, std::string> texts = {{1, "He"}, {2, "llo"}, {3, "\xc3\xa9"}, {4, "!"}};
  return texts.at(id);
}

Choice finished_choice() {
  Choice c;
  c.index = 0;
  c.text = "Hello";
  c.token_ids = {1, 2};
  c.logprobs = {{1, -0.5f, {{1, -0.5f}, {3, -1.25f}}}, {2, -0.25f, {{2, -0.25f}}}};
  c.finish_reason = "length";
  return c;
}

const Usage kUsage{.prompt_tokens = 7, .completion_tokens = 2, .cached_tokens = 4};

TEST(OpenAiResponseTest, UsageCountsTotalAndCachedTokens) {
  EXPECT_EQ(usage_json(kUsage), Json::parse(R"({"prompt_tokens":7,"completion_tokens":2,"total_tokens":9,)"
                                            R"("prompt_tokens_details":{"cached_tokens":4}})"));
}

TEST(OpenAiResponseTest, CompletionResponseShape) {
  Choice second = finished_choice();
  second.index = 1;
  second.finish_reason = "stop";
  const Json j =
      completion_response("cmpl-1", 1700000000, "m", {finished_choice(), second}, kUsage, false, token_text_of);
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "m");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0], Json::parse(R"({"index":0,"text":"Hello","logprobs":null,"finish_reason":"length",)"
                                         R"("stop_reason":null})"));
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"], usage_json(kUsage));
  const Json with_ids = completion_response("cmpl-1", 0, "m", {finished_choice()}, kUsage, false, token_text_of, true);
  EXPECT_EQ(with_ids["choices"][0]["token_ids"], Json::parse("[1,2]"));
}

TEST(OpenAiResponseTest, CompletionLogprobsLayout) {
  const Json j = completion_response("c", 0, "m", {finished_choice()}, kUsage, true, token_text_of);
  EXPECT_EQ(j["choices"][0]["logprobs"],
            Json::parse(R"({"tokens":["He","llo"],"token_logprobs":[-0.5,-0.25],)"
                        R"("top_logprobs":[{"He":-0.5,"\u00e9":-1.25},{"llo":-0.25}],"text_offset":[0,2]})"));
}

TEST(OpenAiResponseTest, ChatResponseShape) {
  const Json j = chat_response("chatcmpl-1", 5, "m", {finished_choice()}, kUsage, false, token_text_of);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0], Json::parse(R"({"index":0,"message":{"role":"assistant","content":"Hello"},)"
                                         R"("logprobs":null,"finish_reason":"length","stop_reason":null})"));
  EXPECT_EQ(j["usage"], usage_json(kUsage));
  EXPECT_FALSE(j["choices"][0].contains("token_ids"));
  EXPECT_EQ(
      chat_response("c", 5, "m", {finished_choice()}, kUsage, false, token_text_of, true)["choices"][0]["token_ids"],
      Json::parse("[1,2]"));
}

TEST(OpenAiResponseTest, ChatLogprobsLayout) {
  Choice c = finished_choice();
  c.logprobs = {{3, -1.25f, {{3, -1.25f}, {4, -2.0f}}}};
  const Json j = chat_response("c", 0, "m", {c}, kUsage, true, token_text_of);
  EXPECT_EQ(
      j["choices"][0]["logprobs"],
      Json::parse(
          R"({"content":[{"token":"\u00e9","logprob":-1.25,"bytes":[195,169],"top_logprobs":[)"
          R"({"token":"\u00e9","logprob":-1.25,"bytes":[195,169]},{"token":"!","logprob":-2.0,"bytes":[33]}]}]})"));
}

TEST(OpenAiResponseTest, CompletionChunkShape) {
  Choice delta;
  delta.text = "He";
  delta.token_ids = {1};
  const Json j = completion_chunk("cmpl-1", 9, "m", delta, false, token_text_of);
  EXPECT_EQ(j, Json::parse(R"({"id":"cmpl-1","object":"text_completion","created":9,"model":"m","choices":[)"
                           R"({"index":0,"text":"He","logprobs":null,"finish_reason":null}]})"));
  delta.finish_reason = "stop";
  const Json last = completion_chunk("cmpl-1", 9, "m", delta, false, token_text_of, true);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(last["choices"][0]["token_ids"], Json::parse("[1]"));
  EXPECT_FALSE(last.contains("usage"));
}

TEST(OpenAiResponseTest, ChatChunkDeltas) {
  Choice delta;
  delta.text = "He";
  const Json first = chat_chunk("chatcmpl-1", 9, "m", delta, true, false, token_text_of);
  EXPECT_EQ(first, Json::parse(R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":9,"model":"m",)"
                               R"("choices":[{"index":0,"delta":{"role":"assistant","content":"He"},"logprobs":null,)"
                               R"("finish_reason":null}]})"));
  EXPECT_EQ(chat_chunk("c", 9, "m", delta, false, false, token_text_of)["choices"][0]["delta"],
            Json::parse(R"({"content":"He"})"));
  // The role comes once, even with no text yet; a later empty delta is an empty object.
  Choice empty;
  EXPECT_EQ(chat_chunk("c", 9, "m", empty, true, false, token_text_of)["choices"][0]["delta"],
            Json::parse(R"({"role":"assistant","content":""})"));
  empty.finish_reason = "length";
  const Json last = chat_chunk("c", 9, "m", empty, false, false, token_text_of);
  EXPECT_EQ(last["choices"][0]["delta"], Json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(last["choices"][0].contains("token_ids"));
  delta.token_ids = {1};
  delta.logprobs = {{1, -0.5f, {}}};
  const Json with_all = chat_chunk("c", 9, "m", delta, false, true, token_text_of, true);
  EXPECT_EQ(with_all["choices"][0]["token_ids"], Json::parse("[1]"));
  EXPECT_EQ(with_all["choices"][0]["logprobs"]["content"][0]["token"], "He");
}

TEST(OpenAiResponseTest, UsageChunkHasNoChoices) {
  const Json chat = usage_chunk("c", 3, "m", Endpoint::kChat, kUsage);
  EXPECT_EQ(chat, Json::parse(R"({"id":"c","object":"chat.completion.chunk","created":3,"model":"m","choices":[],)"
                              R"("usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9,)"
                              R"("prompt_tokens_details":{"cached_tokens":4}}})"));
  EXPECT_EQ(usage_chunk("c", 3, "m", Endpoint::kCompletions, kUsage)["object"], "text_completion");
}

}  // namespace
}  // namespace baton::openai
