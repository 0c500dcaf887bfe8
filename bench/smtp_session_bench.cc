// SMTP session parser throughput (issue #5's benchmark): whole transactions fed to the
// sans-I/O session in network-sized pieces, counting DATA bytes per second. No sockets: this is
// the CPU cost of the protocol itself, the ceiling for one ingest thread.

#include <string>

#include "benchmark/benchmark.h"
#include "ingest/smtp_session.h"

namespace backstop::ingest {
namespace {

// A message of `size` bytes: headers, then 76-character lines, some starting with a dot.
std::string Body(size_t size) {
  std::string body = "From: a@b.test\r\nTo: x@example.com\r\nSubject: bench\r\n\r\n";
  std::string line(74, 'x');
  for (size_t i = 0; body.size() < size; ++i) {
    body += (i % 50 == 0 ? "." : "") + line + "\r\n";
  }
  return body;
}

// The DATA body on the wire: dot-stuffed, ended with CRLF.CRLF.
std::string Stuffed(const std::string& body) {
  std::string out;
  out.reserve(body.size() + body.size() / 50 + 8);
  size_t start = 0;
  while (start < body.size()) {
    const size_t end = body.find("\r\n", start);
    if (body[start] == '.') {
      out += '.';
    }
    out.append(body, start, end + 2 - start);
    start = end + 2;
  }
  return out + ".\r\n";
}

void BM_DataTransaction(benchmark::State& state, bool bdat) {
  const size_t message_size = static_cast<size_t>(state.range(0));
  const size_t piece = static_cast<size_t>(state.range(1));
  const std::string body = Body(message_size);
  const std::string wire = "MAIL FROM:<a@b.test> SIZE=" + std::to_string(body.size()) +
                           "\r\nRCPT TO:<x@example.com>\r\n" +
                           (bdat ? "BDAT " + std::to_string(body.size()) + " LAST\r\n" + body
                                 : "DATA\r\n" + Stuffed(body));

  SessionOptions options;
  options.hostname = "mx.bench";
  absl::Time now = absl::UnixEpoch();
  SmtpSession session(options, ClientInfo{"192.0.2.1", 1234}, now);
  session.Start(now);
  session.Resolve(Verdict::Accept(), now);
  session.Feed("EHLO client.bench\r\n", now);
  while (session.pending() != RequestKind::kNone) {
    session.Resolve(Verdict::Accept(), now);
  }
  (void)session.TakeOutput();

  for (auto _ : state) {
    for (size_t offset = 0; offset < wire.size(); offset += piece) {
      session.Feed(std::string_view(wire).substr(offset, piece), now);
      while (session.pending() != RequestKind::kNone) {
        if (session.pending() == RequestKind::kEndOfData) {
          benchmark::DoNotOptimize(session.transaction().data.size());
        }
        session.Resolve(Verdict::Accept(), now);
      }
    }
    benchmark::DoNotOptimize(session.TakeOutput());
  }
  if (session.messages_accepted() == 0 || session.closing()) {
    state.SkipWithError("the session did not accept the messages");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_Data(benchmark::State& state) {
  BM_DataTransaction(state, false);
}
void BM_Bdat(benchmark::State& state) {
  BM_DataTransaction(state, true);
}

// Message sizes 2 KiB, 50 KiB and 1 MiB, fed in 16 KiB pieces (the ring's buffer size) and, for
// the small message, in 1 KiB pieces.
BENCHMARK(BM_Data)
    ->Args({2048, 16384})
    ->Args({2048, 1024})
    ->Args({51200, 16384})
    ->Args({1 << 20, 16384});
BENCHMARK(BM_Bdat)->Args({2048, 16384})->Args({51200, 16384})->Args({1 << 20, 16384});

}  // namespace
}  // namespace backstop::ingest

BENCHMARK_MAIN();
