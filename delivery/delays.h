#pragma once

// Postfix-like delay fields of the delivery-side log lines (delivered, deferred, bounced,
// delay warning): `delay`, the seconds since the message arrived, and `delays` = "a/b/c/d",
// where that time went:
//   a  arrival at ingest (end of data) → appended to the queue (the entry's cluster time)
//   b  the rest until this attempt: waiting in the queue to be leased, then for a connection
//      slot or for the messages ahead of it on its connection (as Postfix's b counts the wait
//      in its active queue)
//   c  connection setup: DNS (MX and address lookups) + connect + greeting + EHLO/STARTTLS;
//      0 for a message carried by a connection that was already set up
//   d  the message's transmission: MAIL → the reply to the end of data
// The four add up to `delay` (to rounding); clocks of different nodes that disagree are
// clamped, never negative. Pure: no clock read here.

#include <string>

#include "absl/time/time.h"

namespace backstop::delivery {

// What an attempt spent beyond the queue; zero for lines without a connection (an expiry, an
// operator's bounce, a warning without an attempt).
struct AttemptTimes {
  absl::Duration connection_setup = absl::ZeroDuration();  // c
  absl::Duration transmission = absl::ZeroDuration();      // d
};

struct Delays {
  absl::Duration total;             // delay
  absl::Duration before_queue;      // a
  absl::Duration in_queue;          // b
  absl::Duration connection_setup;  // c
  absl::Duration transmission;      // d
};

// `arrival`: the envelope's arrival (ingest's clock); `committed`: the entry's enqueue time in
// the queue (the leader's clock); `now`: the event being logged (this worker's clock).
Delays ComputeDelays(absl::Time arrival, absl::Time committed, absl::Time now,
                     const AttemptTimes& attempt);

// Seconds rounded to two decimals (the JSON number of `delay`).
double RoundedSeconds(absl::Duration duration);
// "a/b/c/d", each in seconds with two decimals: "0.01/12.50/0.03/0.10".
std::string FormatDelays(const Delays& delays);

}  // namespace backstop::delivery
