#include "queue/raft/node.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "queue/raft/codec.h"
#include "queue/raft/log_storage.h"
#include "tests/unit/raft/test_cluster.h"

namespace backstop::raft {
namespace {

using testing::TestCluster;

const absl::Time kT0 = absl::FromUnixSeconds(1'700'000'000);

// One node driven by hand: the test plays every peer.
class SoloNodeTest : public ::testing::Test {
 protected:
  void Init(int voters, NodeOptions options = {}, std::vector<Entry> log = {},
            Term term = Term(1)) {
    ConfState conf;
    for (int i = 1; i <= voters; ++i) {
      conf.voters.emplace_back(i);
    }
    ASSERT_TRUE(Bootstrap(storage_, conf).ok());
    ASSERT_TRUE(storage_.Append(log).ok());
    ASSERT_TRUE(storage_.SetHardState(HardState{term, kNoNode, LogIndex(1)}).ok());
    options.id = NodeId(1);
    options.random_seed = 42;
    auto node = Node::Create(options, &storage_);
    ASSERT_TRUE(node.ok()) << node.status();
    node_ = *std::move(node);
  }

  // Persists and returns the pending Ready, as the owner would.
  Ready Flush() {
    if (!node_->HasReady()) {
      return {};
    }
    Ready rd = node_->GetReady();
    if (rd.snapshot) {
      EXPECT_TRUE(storage_.ApplySnapshot(*rd.snapshot).ok());
    }
    EXPECT_TRUE(storage_.Append(rd.entries).ok());
    if (rd.hard_state) {
      EXPECT_TRUE(storage_.SetHardState(*rd.hard_state).ok());
    }
    node_->Advance();
    return rd;
  }

  // All messages of the pending Ready, both kinds.
  std::vector<Message> FlushMessages() {
    Ready rd = Flush();
    std::vector<Message> all = rd.messages;
    all.insert(all.end(), rd.messages_after_persist.begin(), rd.messages_after_persist.end());
    return all;
  }

  static Message Msg(MessageType type, uint64_t from, uint64_t term) {
    Message m;
    m.type = type;
    m.from = NodeId(from);
    m.to = NodeId(1);
    m.term = Term(term);
    return m;
  }

  static Entry E(uint64_t index, uint64_t term, std::string data = "") {
    Entry e;
    e.index = LogIndex(index);
    e.term = Term(term);
    e.data = std::move(data);
    return e;
  }

  static Message Append(uint64_t from, uint64_t term, uint64_t prev, uint64_t prev_term,
                        std::vector<Entry> entries, uint64_t commit) {
    Message m = Msg(MessageType::kAppend, from, term);
    m.index = LogIndex(prev);
    m.log_term = Term(prev_term);
    m.entries = std::move(entries);
    m.commit = LogIndex(commit);
    return m;
  }

  static Message VoteReq(uint64_t from, uint64_t term, uint64_t last, uint64_t last_term,
                         MessageType type = MessageType::kVote) {
    Message m = Msg(type, from, term);
    m.index = LogIndex(last);
    m.log_term = Term(last_term);
    return m;
  }

  static Message SnapshotMsg(uint64_t from, uint64_t term, uint64_t index, uint64_t snap_term,
                             ConfState conf_state) {
    Message m = Msg(MessageType::kSnapshot, from, term);
    Snapshot snap;
    snap.meta.index = LogIndex(index);
    snap.meta.term = Term(snap_term);
    snap.meta.conf_state = std::move(conf_state);
    m.snapshot = std::move(snap);
    return m;
  }

  // Makes the node leader of term 2 in a 3-node cluster (voters 2 and 3 grant).
  void BecomeLeaderOf3() {
    Init(3);
    node_->Campaign();
    Flush();  // pre-votes out
    node_->Step(Msg(MessageType::kPreVoteResponse, 2, 2));
    Flush();  // becomes candidate, persists its vote
    node_->Step(Msg(MessageType::kVoteResponse, 2, 2));
    ASSERT_EQ(node_->role(), Role::kLeader);
  }

  MemoryLogStorage storage_;
  std::unique_ptr<Node> node_;
};

// ---- Figure 2: all servers -------------------------------------------------------------------

TEST_F(SoloNodeTest, StepsDownToFollowerOnHigherTerm) {
  BecomeLeaderOf3();
  node_->Step(Append(2, 5, 1, 1, {}, 0));
  EXPECT_EQ(node_->role(), Role::kFollower);
  EXPECT_EQ(node_->term(), Term(5));
  EXPECT_EQ(node_->leader(), NodeId(2));
}

TEST_F(SoloNodeTest, AnswersStaleLeaderWithCurrentTerm) {
  Init(3, {}, {}, Term(4));
  node_->Step(Append(2, 3, 1, 1, {E(2, 3)}, 0));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MessageType::kAppendResponse);
  EXPECT_EQ(out[0].term, Term(4));
  EXPECT_EQ(node_->last_index(), LogIndex(1));
}

TEST_F(SoloNodeTest, AppliesOnlyCommittedEntriesInOrder) {
  Init(3);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1, "a"), E(3, 1, "b"), E(4, 1, "c")}, 3));
  Ready rd = Flush();
  ASSERT_EQ(rd.committed_entries.size(), 2u);
  EXPECT_EQ(rd.committed_entries[0].data, "a");
  EXPECT_EQ(rd.committed_entries[1].data, "b");
  EXPECT_EQ(node_->applied(), LogIndex(3));
}

// ---- Figure 2: followers ---------------------------------------------------------------------

TEST_F(SoloNodeTest, RejectsAppendWhosePreviousEntryDoesNotMatch) {
  Init(3, {}, {E(2, 1)});
  node_->Step(Append(2, 2, 2, 2, {E(3, 2)}, 0));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
  EXPECT_EQ(out[0].index, LogIndex(2));
  EXPECT_EQ(node_->last_index(), LogIndex(2));
}

TEST_F(SoloNodeTest, RejectsAppendBeyondItsLog) {
  Init(3);
  node_->Step(Append(2, 1, 5, 1, {E(6, 1)}, 0));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
  EXPECT_EQ(out[0].reject_hint, LogIndex(1));  // our last index
}

TEST_F(SoloNodeTest, TruncatesConflictingSuffixAndAppends) {
  Init(3, {}, {E(2, 1, "old2"), E(3, 1, "old3"), E(4, 1, "old4")});
  node_->Step(Append(2, 2, 2, 1, {E(3, 2, "new3")}, 0));
  Flush();
  EXPECT_EQ(node_->last_index(), LogIndex(3));
  EXPECT_EQ(node_->TermAt(LogIndex(3)), Term(2));
  EXPECT_EQ(storage_.LastIndex(), LogIndex(3));
}

TEST_F(SoloNodeTest, KeepsMatchingEntriesOnDuplicateAppend) {
  Init(3);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1), E(3, 1)}, 0));
  Flush();
  node_->Step(Append(2, 1, 1, 1, {E(2, 1)}, 0));  // stale, shorter duplicate
  Flush();
  EXPECT_EQ(node_->last_index(), LogIndex(3));
}

TEST_F(SoloNodeTest, CommitsUpToLastNewEntryNotLeaderCommit) {
  Init(3, {}, {E(2, 1), E(3, 1), E(4, 1)});
  // Entries 3 and 4 are ours but not verified by this append, which only covers index 2.
  node_->Step(Append(2, 1, 1, 1, {E(2, 1)}, 4));
  EXPECT_EQ(node_->commit(), LogIndex(2));
}

TEST_F(SoloNodeTest, IgnoresAppendWhoseEntriesDoNotFollowItsIndex) {
  Init(3);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1), E(7, 1)}, 7));
  EXPECT_TRUE(FlushMessages().empty());
  EXPECT_EQ(node_->last_index(), LogIndex(1));
  EXPECT_EQ(node_->commit(), LogIndex(1));
  EXPECT_EQ(storage_.LastIndex(), LogIndex(1));
}

TEST_F(SoloNodeTest, IgnoresAppendWhoseEntryTermsAreOutOfOrder) {
  Init(3);
  node_->Step(Append(2, 3, 1, 1, {E(2, 3), E(3, 2)}, 0));  // falls back to an older term
  node_->Step(Append(2, 3, 1, 1, {E(2, 4)}, 0));           // above the sender's own term
  node_->Step(Append(2, 3, 1, 2, {E(2, 1)}, 0));           // below the term at `index`
  EXPECT_TRUE(FlushMessages().empty());
  EXPECT_EQ(node_->last_index(), LogIndex(1));
  EXPECT_EQ(node_->term(), Term(1));
}

TEST_F(SoloNodeTest, GrantsAtMostOneVotePerTerm) {
  Init(3);
  node_->Step(VoteReq(2, 2, 1, 1));
  node_->Step(VoteReq(3, 2, 1, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 2u);
  EXPECT_FALSE(out[0].reject);
  EXPECT_TRUE(out[1].reject);
  EXPECT_EQ(node_->vote(), NodeId(2));
}

TEST_F(SoloNodeTest, NodeThatForgotItsVotesGrantsNoneBeforeHearingALeader) {
  NodeOptions options;
  options.past_votes = PastVotes::kForgotten;
  Init(3, options);
  node_->Step(VoteReq(2, 2, 1, 1));
  node_->Step(VoteReq(3, 3, 1, 1, MessageType::kPreVote));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 2u);
  EXPECT_TRUE(out[0].reject);
  EXPECT_TRUE(out[1].reject);
  EXPECT_TRUE(node_->vote().IsNone());
}

TEST_F(SoloNodeTest, NodeThatForgotItsVotesVotesInTermsAfterItHeardALeader) {
  NodeOptions options;
  options.past_votes = PastVotes::kForgotten;
  Init(3, options);
  node_->Step(Append(2, 3, 1, 1, {}, 1));  // leader 2 of term 3
  FlushMessages();
  for (int i = 0; i < 2 * options.election_ticks; ++i) {  // leader 2 falls silent
    node_->Tick(kT0);
  }
  FlushMessages();
  node_->Step(VoteReq(3, 4, 1, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FALSE(out[0].reject);
  EXPECT_EQ(node_->vote(), NodeId(3));
}

TEST_F(SoloNodeTest, RegrantsVoteToSameCandidate) {
  Init(3);
  node_->Step(VoteReq(2, 2, 1, 1));
  node_->Step(VoteReq(2, 2, 1, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 2u);
  EXPECT_FALSE(out[1].reject);
}

TEST_F(SoloNodeTest, RejectsVoteForCandidateWithOlderLastTerm) {
  Init(3, {}, {E(2, 2)}, Term(2));
  node_->Step(VoteReq(2, 3, 5, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
}

TEST_F(SoloNodeTest, RejectsVoteForCandidateWithShorterLogOfSameTerm) {
  Init(3, {}, {E(2, 1), E(3, 1)});
  node_->Step(VoteReq(2, 2, 2, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
}

TEST_F(SoloNodeTest, VoteResponseIsSentOnlyAfterPersistence) {
  Init(3);
  node_->Step(VoteReq(2, 2, 1, 1));
  Ready rd = node_->GetReady();
  EXPECT_TRUE(rd.messages.empty());
  ASSERT_EQ(rd.messages_after_persist.size(), 1u);
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->vote, NodeId(2));
}

TEST_F(SoloNodeTest, TestFaultSendsVoteResponseBeforePersistence) {
  NodeOptions options;
  options.test_faults = RaftTestFault::kSendVoteBeforePersist;
  Init(3, options);
  node_->Step(VoteReq(2, 2, 1, 1));
  Ready rd = node_->GetReady();
  EXPECT_EQ(rd.messages.size(), 1u);
}

TEST_F(SoloNodeTest, AppendAckIsSentOnlyAfterPersistence) {
  Init(3);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1)}, 0));
  Ready rd = node_->GetReady();
  EXPECT_TRUE(rd.messages.empty());
  ASSERT_EQ(rd.messages_after_persist.size(), 1u);
  EXPECT_EQ(rd.messages_after_persist[0].index, LogIndex(2));
  ASSERT_EQ(rd.entries.size(), 1u);
}

TEST_F(SoloNodeTest, TestFaultAcksAppendBeforePersistence) {
  NodeOptions options;
  options.test_faults = RaftTestFault::kAckAppendBeforePersist;
  Init(3, options);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1)}, 0));
  Ready rd = node_->GetReady();
  EXPECT_EQ(rd.messages.size(), 1u);
  EXPECT_TRUE(rd.messages_after_persist.empty());
}

TEST_F(SoloNodeTest, NoSecondReadyUntilAdvance) {
  Init(3);
  node_->Step(Append(2, 1, 1, 1, {E(2, 1)}, 0));
  node_->GetReady();
  node_->Step(Append(2, 1, 2, 1, {E(3, 1)}, 0));
  EXPECT_FALSE(node_->HasReady());
  node_->Advance();
  EXPECT_TRUE(node_->HasReady());
}

TEST_F(SoloNodeTest, DoesNotGrantVoteForLowerTerm) {
  Init(3, {}, {}, Term(3));
  node_->Step(VoteReq(2, 2, 1, 1));
  for (const Message& m : FlushMessages()) {
    EXPECT_FALSE(m.type == MessageType::kVoteResponse && !m.reject);
  }
  EXPECT_EQ(node_->vote(), kNoNode);
  EXPECT_EQ(node_->term(), Term(3));
}

TEST_F(SoloNodeTest, LeaderTrafficKeepsFollowerFromCampaigning) {
  Init(3);
  for (int i = 0; i < 100; ++i) {
    node_->Tick(kT0);
    node_->Step(Append(2, 1, 1, 1, {}, 1));
    FlushMessages();
  }
  EXPECT_EQ(node_->role(), Role::kFollower);
  EXPECT_EQ(node_->term(), Term(1));
}

// Election-timer tests run over several randomised timeouts (10..19 ticks): each builds a
// follower of term 2 without PreVote, ticks it 9 times, shows it one vote request, ticks again.
class ElectionTimerTest : public ::testing::TestWithParam<uint64_t> {
 protected:
  void Start(std::vector<Entry> log) {
    ASSERT_TRUE(Bootstrap(storage_, ConfState{{NodeId(1), NodeId(2), NodeId(3)}, {}}).ok());
    ASSERT_TRUE(storage_.Append(log).ok());
    ASSERT_TRUE(storage_.SetHardState(HardState{Term(2), kNoNode, LogIndex(1)}).ok());
    NodeOptions options;
    options.id = NodeId(1);
    options.pre_vote = PreVote::kDisabled;
    options.random_seed = GetParam();
    auto node = Node::Create(options, &storage_);
    ASSERT_TRUE(node.ok());
    node_ = *std::move(node);
  }
  void TickTimes(int n) {
    for (int i = 0; i < n; ++i) {
      node_->Tick(kT0);
    }
  }
  // A vote request from node 2 whose last entry is (1, term 1).
  void RequestVote(uint64_t term) {
    Message vote;
    vote.type = MessageType::kVote;
    vote.from = NodeId(2);
    vote.to = NodeId(1);
    vote.term = Term(term);
    vote.index = LogIndex(1);
    vote.log_term = Term(1);
    node_->Step(vote);
  }

  MemoryLogStorage storage_;
  std::unique_ptr<Node> node_;
};

TEST_P(ElectionTimerTest, GrantingVoteResetsElectionTimer) {
  Start({});
  TickTimes(9);
  RequestVote(2);
  ASSERT_EQ(node_->vote(), NodeId(2));
  TickTimes(9);
  EXPECT_EQ(node_->role(), Role::kFollower);  // 18 ticks would have fired most timeouts
}

TEST_P(ElectionTimerTest, RefusedVoteRequestDoesNotResetElectionTimer) {
  // A candidate with a stale log raises our term but must not postpone our own timeout: we may
  // be the node with the log everyone needs.
  Entry ours;
  ours.index = LogIndex(2);
  ours.term = Term(2);
  Start({ours});
  TickTimes(9);
  RequestVote(3);
  ASSERT_EQ(node_->term(), Term(3));
  ASSERT_EQ(node_->vote(), kNoNode);
  TickTimes(10);
  EXPECT_EQ(node_->role(), Role::kCandidate);  // 19 ticks fire every timeout
}

INSTANTIATE_TEST_SUITE_P(Seeds, ElectionTimerTest, ::testing::Range<uint64_t>(1, 21));

// ---- Figure 2: candidates --------------------------------------------------------------------

TEST_F(SoloNodeTest, CampaignsAfterRandomizedElectionTimeout) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(3, options);
  int ticks = 0;
  while (node_->role() == Role::kFollower && ticks < 100) {
    node_->Tick(kT0);
    ++ticks;
  }
  EXPECT_GE(ticks, options.election_ticks);
  EXPECT_LT(ticks, 2 * options.election_ticks);
  EXPECT_EQ(node_->role(), Role::kCandidate);
  EXPECT_EQ(node_->term(), Term(2));
}

TEST_F(SoloNodeTest, CandidateCountsOwnVoteOnlyOncePersisted) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(5, options);
  node_->Campaign();
  node_->Step(Msg(MessageType::kVoteResponse, 2, 2));
  node_->Step(Msg(MessageType::kVoteResponse, 3, 2));
  EXPECT_EQ(node_->role(), Role::kCandidate);  // 2 of 5 plus an unpersisted self vote
  Flush();
  EXPECT_EQ(node_->role(), Role::kLeader);
}

TEST_F(SoloNodeTest, CandidateStepsDownWhenMajorityRejects) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(3, options);
  node_->Campaign();
  Flush();
  Message reject = Msg(MessageType::kVoteResponse, 2, 2);
  reject.reject = true;
  node_->Step(reject);
  reject.from = NodeId(3);
  node_->Step(reject);
  EXPECT_EQ(node_->role(), Role::kFollower);
}

TEST_F(SoloNodeTest, CandidateBecomesFollowerOnAppendFromWinnerOfSameTerm) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(3, options);
  node_->Campaign();
  node_->Step(Append(3, 2, 1, 1, {}, 0));
  EXPECT_EQ(node_->role(), Role::kFollower);
  EXPECT_EQ(node_->leader(), NodeId(3));
}

// ---- Figure 2: leaders -----------------------------------------------------------------------

TEST_F(SoloNodeTest, LeaderAppendsEmptyEntryOfItsTerm) {
  BecomeLeaderOf3();
  EXPECT_EQ(node_->last_index(), LogIndex(2));
  EXPECT_EQ(node_->TermAt(LogIndex(2)), Term(2));
}

TEST_F(SoloNodeTest, LeaderSendsAppendsBeforeItsOwnPersistence) {
  BecomeLeaderOf3();
  Ready rd = node_->GetReady();
  ASSERT_EQ(rd.entries.size(), 1u);
  int appends = 0;
  for (const Message& m : rd.messages) {
    appends += m.type == MessageType::kAppend ? 1 : 0;
  }
  EXPECT_EQ(appends, 2);
}

TEST_F(SoloNodeTest, LeaderSendsHeartbeatEveryHeartbeatTick) {
  BecomeLeaderOf3();
  Flush();
  node_->Tick(kT0);
  int heartbeats = 0;
  for (const Message& m : FlushMessages()) {
    heartbeats += m.type == MessageType::kHeartbeat ? 1 : 0;
  }
  EXPECT_EQ(heartbeats, 2);
}

TEST_F(SoloNodeTest, HeartbeatCommitNeverExceedsFollowersMatch) {
  BecomeLeaderOf3();
  Flush();
  Message ack = Msg(MessageType::kAppendResponse, 2, 2);
  ack.index = LogIndex(2);
  node_->Step(ack);
  ASSERT_EQ(node_->commit(), LogIndex(2));
  FlushMessages();
  node_->Tick(kT0);
  for (const Message& m : FlushMessages()) {
    if (m.type == MessageType::kHeartbeat) {
      EXPECT_EQ(m.commit, m.to == NodeId(2) ? LogIndex(2) : LogIndex(0)) << m.to.value();
    }
  }
}

TEST_F(SoloNodeTest, LeaderCountsItselfOnlyForPersistedEntries) {
  BecomeLeaderOf3();
  Message ack = Msg(MessageType::kAppendResponse, 2, 2);
  ack.index = LogIndex(2);
  node_->Step(ack);
  EXPECT_EQ(node_->commit(), LogIndex(1));  // 1 durable copy of 3
  Message ack3 = ack;
  ack3.from = NodeId(3);
  node_->Step(ack3);
  EXPECT_EQ(node_->commit(), LogIndex(2));  // two followers suffice
}

TEST_F(SoloNodeTest, SingleNodeCommitsOnlyAfterPersisting) {
  Init(1);
  node_->Campaign();
  Flush();
  ASSERT_EQ(node_->role(), Role::kLeader);
  ASSERT_TRUE(node_->Propose({"x"}, kT0).ok());
  EXPECT_EQ(node_->commit(), LogIndex(1));
  Flush();
  EXPECT_EQ(node_->commit(), LogIndex(3));
}

TEST_F(SoloNodeTest, DoesNotCommitPreviousTermEntryByCounting) {
  // Figure 8: index 2 is from term 1; as leader of term 3 a majority holding it is not enough.
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(3, options, {E(2, 1)}, Term(2));
  node_->Campaign();
  Flush();
  node_->Step(Msg(MessageType::kVoteResponse, 2, 3));
  ASSERT_EQ(node_->role(), Role::kLeader);
  ASSERT_EQ(node_->last_index(), LogIndex(3));  // the empty entry of term 3
  Message ack = Msg(MessageType::kAppendResponse, 2, 3);
  ack.index = LogIndex(2);
  node_->Step(ack);
  EXPECT_EQ(node_->commit(), LogIndex(1));
  ack.index = LogIndex(3);
  node_->Step(ack);
  Flush();                                  // the leader's own copy of index 3
  EXPECT_EQ(node_->commit(), LogIndex(3));  // index 2 is committed indirectly
}

TEST_F(SoloNodeTest, TestFaultCommitsPreviousTermEntryByCounting) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  options.test_faults = RaftTestFault::kCommitPreviousTermByCount;
  Init(3, options, {E(2, 1)}, Term(2));
  node_->Campaign();
  Flush();
  node_->Step(Msg(MessageType::kVoteResponse, 2, 3));
  Message ack = Msg(MessageType::kAppendResponse, 2, 3);
  ack.index = LogIndex(2);
  node_->Step(ack);
  EXPECT_EQ(node_->commit(), LogIndex(2));
}

TEST_F(SoloNodeTest, TestFaultGrantsVoteWithoutLogCheck) {
  NodeOptions options;
  options.test_faults = RaftTestFault::kGrantVoteWithoutLogCheck;
  Init(3, options, {E(2, 2)}, Term(2));
  node_->Step(VoteReq(2, 3, 1, 1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FALSE(out[0].reject);
}

TEST_F(SoloNodeTest, FollowerRejectionHintSkipsWholeConflictingTerm) {
  Init(3, {}, {E(2, 2), E(3, 2), E(4, 2), E(5, 2)}, Term(2));
  // The leader's entry at 5 is from term 3; all our term-2 entries above 1 might not match...
  node_->Step(Append(2, 4, 5, 1, {}, 0));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
  EXPECT_EQ(out[0].reject_hint, LogIndex(1));  // ...so it points straight below them
  EXPECT_EQ(out[0].log_term, Term(1));
}

TEST_F(SoloNodeTest, SplitVoteCandidateRetriesInNextTerm) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Init(3, options);
  node_->Campaign();
  Flush();
  ASSERT_EQ(node_->term(), Term(2));
  for (int i = 0; i < 2 * options.election_ticks && node_->term() == Term(2); ++i) {
    node_->Tick(kT0);
  }
  EXPECT_EQ(node_->role(), Role::kCandidate);
  EXPECT_EQ(node_->term(), Term(3));
}

TEST_F(SoloNodeTest, SnapshotForEntriesAlreadyHeldOnlyAdvancesCommit) {
  Init(3, {}, {E(2, 1), E(3, 1)});
  node_->Step(SnapshotMsg(2, 1, 2, 1, node_->conf_state()));
  Ready rd = Flush();
  EXPECT_FALSE(rd.snapshot.has_value());
  EXPECT_EQ(node_->commit(), LogIndex(2));
  EXPECT_EQ(node_->last_index(), LogIndex(3));
}

TEST_F(SoloNodeTest, SnapshotMatchingOurLogAcknowledgesOnlyTheSnapshotIndex) {
  // Entries 4 and 5 come from a term-2 leader that lost; the term-3 leader's log differs there.
  Init(3, {}, {E(2, 1), E(3, 1), E(4, 2), E(5, 2)}, Term(2));
  node_->Step(SnapshotMsg(2, 3, 3, 1, node_->conf_state()));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MessageType::kAppendResponse);
  EXPECT_FALSE(out[0].reject);
  // Acknowledging 5 would make the leader count us for its own entries 4 and 5 (and send us a
  // commit index covering our stale ones).
  EXPECT_EQ(out[0].index, LogIndex(3));
  EXPECT_EQ(node_->commit(), LogIndex(3));
  EXPECT_EQ(node_->last_index(), LogIndex(5));
}

TEST_F(SoloNodeTest, SnapshotArrivingWhileChangesAreAppliedKeepsTheSnapshotsMembership) {
  auto conf_entry = [](uint64_t index, ConfChangeType type) {
    Entry e = E(index, 1);
    e.type = EntryType::kConfChange;
    e.data = EncodeConfChange({type, NodeId(4)});
    return e;
  };
  Init(3, {},
       {conf_entry(2, ConfChangeType::kAddLearner), conf_entry(3, ConfChangeType::kPromoteVoter)});
  node_->Step(Append(2, 1, 3, 1, {}, 3));
  Ready applying = node_->GetReady();  // hands out both changes; the owner is still at it
  ASSERT_EQ(applying.committed_entries.size(), 2u);
  // Meanwhile the leader, which has since removed node 4 again, sends a snapshot.
  const ConfState without_4{{NodeId(1), NodeId(2), NodeId(3)}, {}};
  node_->Step(SnapshotMsg(2, 1, 10, 1, without_4));
  EXPECT_EQ(node_->effective_conf_state(), without_4);  // acted on at once
  ASSERT_TRUE(storage_.SetHardState(*applying.hard_state).ok());
  node_->Advance();
  // Applied up to 3, the snapshot not yet installed: a snapshot the owner takes now records the
  // membership as of index 3.
  EXPECT_EQ(node_->applied(), LogIndex(3));
  const ConfState with_4{{NodeId(1), NodeId(2), NodeId(3), NodeId(4)}, {}};
  EXPECT_EQ(node_->conf_state(), with_4);
  EXPECT_EQ(node_->effective_conf_state(), without_4);
  Ready rd = Flush();
  ASSERT_TRUE(rd.snapshot.has_value());
  EXPECT_EQ(node_->conf_state(), without_4);
  EXPECT_EQ(node_->effective_conf_state(), without_4);
}

TEST_F(SoloNodeTest, SnapshotInstalledWhileANewerOneArrivesCountsAsApplied) {
  Init(3);
  const ConfState first_conf{{NodeId(1), NodeId(2), NodeId(3)}, {NodeId(4)}};
  node_->Step(SnapshotMsg(2, 1, 5, 1, first_conf));
  Ready installing = node_->GetReady();
  ASSERT_TRUE(installing.snapshot.has_value());
  // While the owner installs it, the leader (having compacted further) sends a newer one.
  node_->Step(SnapshotMsg(2, 1, 9, 1, node_->conf_state()));
  ASSERT_TRUE(storage_.ApplySnapshot(*installing.snapshot).ok());
  ASSERT_TRUE(storage_.SetHardState(*installing.hard_state).ok());
  node_->Advance();
  // The state machine now holds index 5.
  EXPECT_EQ(node_->applied(), LogIndex(5));
  EXPECT_EQ(node_->conf_state(), first_conf);
  Ready rd = Flush();
  ASSERT_TRUE(rd.snapshot.has_value());
  EXPECT_EQ(node_->applied(), LogIndex(9));
}

TEST_F(SoloNodeTest, RestartWithAppliedIndexDoesNotReapply) {
  Init(3, {}, {E(2, 1, "a"), E(3, 1, "b")});
  ASSERT_TRUE(storage_.SetHardState(HardState{Term(1), kNoNode, LogIndex(3)}).ok());
  NodeOptions options;
  options.id = NodeId(1);
  options.applied = LogIndex(2);
  auto node = Node::Create(options, &storage_);
  ASSERT_TRUE(node.ok());
  Ready rd = (*node)->GetReady();
  ASSERT_EQ(rd.committed_entries.size(), 1u);
  EXPECT_EQ(rd.committed_entries[0].data, "b");
}

TEST_F(SoloNodeTest, NodeWhoseRemovalIsOnlyInItsLogStillCampaignsAndStepsDownOnceApplied) {
  NodeOptions options;
  options.pre_vote = PreVote::kDisabled;
  Entry removal = E(2, 1);
  removal.type = EntryType::kConfChange;
  removal.data = EncodeConfChange({ConfChangeType::kRemove, NodeId(1)});
  Init(3, options, {removal});
  ASSERT_EQ(node_->effective_conf_state().voters, (std::vector<NodeId>{NodeId(2), NodeId(3)}));
  node_->Campaign();
  Flush();
  ASSERT_EQ(node_->role(), Role::kCandidate);  // it holds the only copy of the removal
  node_->Step(Msg(MessageType::kVoteResponse, 2, 2));
  EXPECT_EQ(node_->role(), Role::kCandidate);  // its own vote does not count: 1 of {2, 3}
  node_->Step(Msg(MessageType::kVoteResponse, 3, 2));
  ASSERT_EQ(node_->role(), Role::kLeader);
  Flush();
  Message ack = Msg(MessageType::kAppendResponse, 2, 2);
  ack.index = LogIndex(3);
  node_->Step(ack);
  EXPECT_EQ(node_->role(), Role::kLeader);  // committed, not yet applied
  ack.from = NodeId(3);
  node_->Step(ack);
  ASSERT_EQ(node_->commit(), LogIndex(3));
  Flush();  // applies the removal
  EXPECT_EQ(node_->role(), Role::kFollower);
  EXPECT_TRUE(node_->conf_state().voters == (std::vector<NodeId>{NodeId(2), NodeId(3)}));
}

// ---- PreVote ---------------------------------------------------------------------------------

TEST_F(SoloNodeTest, PreVoteDoesNotChangeTermOrVote) {
  Init(3);
  node_->Campaign();
  EXPECT_EQ(node_->role(), Role::kPreCandidate);
  EXPECT_EQ(node_->term(), Term(1));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].type, MessageType::kPreVote);
  EXPECT_EQ(out[0].term, Term(2));
  EXPECT_EQ(storage_.GetHardState().vote, kNoNode);
}

TEST_F(SoloNodeTest, GrantingPreVoteDoesNotChangeTerm) {
  Init(3);
  node_->Step(VoteReq(2, 2, 1, 1, MessageType::kPreVote));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FALSE(out[0].reject);
  EXPECT_EQ(node_->term(), Term(1));
  EXPECT_EQ(node_->vote(), kNoNode);
}

TEST_F(SoloNodeTest, RejectsPreVoteFromCandidateWithStaleLog) {
  Init(3, {}, {E(2, 1)});
  node_->Step(VoteReq(2, 2, 1, 1, MessageType::kPreVote));
  std::vector<Message> out = FlushMessages();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
}

TEST(PreVoteTest, IsolatedNodeDoesNotInflateTerm) {
  TestCluster c(3);
  c.Elect(1);
  const Term term = c.node(1).term();
  c.Isolate(3);
  for (int i = 0; i < 100; ++i) {
    c.TickAll(1);
  }
  EXPECT_EQ(c.node(3).term(), term);
  c.Heal();
  c.TickAll(5);
  EXPECT_EQ(c.node(1).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).term(), term);
}

// ---- CheckQuorum -----------------------------------------------------------------------------

TEST(CheckQuorumTest, LeaderStepsDownWithoutQuorum) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(1);
  for (int i = 0; i < 25 && c.node(1).role() == Role::kLeader; ++i) {
    c.TickAll(1);
  }
  EXPECT_NE(c.node(1).role(), Role::kLeader);
}

TEST(CheckQuorumTest, FollowerInLeaseIgnoresVoteRequests) {
  TestCluster c(3);
  c.Elect(1);
  // Node 3 forces a real election (no pre-vote) while 2 still hears from the leader.
  Message m;
  m.type = MessageType::kVote;
  m.from = NodeId(3);
  m.to = NodeId(2);
  m.term = c.node(1).term() + 1;
  m.index = c.node(3).last_index();
  m.log_term = *c.node(3).TermAt(m.index);
  c.node(2).Step(m);
  EXPECT_EQ(c.node(2).term(), c.node(1).term());
  EXPECT_FALSE(c.node(2).HasReady());
}

TEST(CheckQuorumTest, StaleLeaderStepsDownWhenFollowerHasHigherTerm) {
  TestCluster c(3);
  c.Elect(1);
  const Term old_term = c.node(1).term();
  c.Isolate(1);
  for (int i = 0; i < 40 && c.node(2).role() != Role::kLeader && c.node(3).role() != Role::kLeader;
       ++i) {
    c.TickAll(1);
  }
  ASSERT_GT(std::max(c.node(2).term(), c.node(3).term()), old_term);
  c.Heal();
  c.TickAll(3);
  EXPECT_NE(c.node(1).role(), Role::kLeader);
  EXPECT_GT(c.node(1).term(), old_term);
}

// ---- Replication and flow control ------------------------------------------------------------

TEST(ReplicationTest, ReplicatesAndAppliesProposalsEverywhere) {
  TestCluster c(3);
  c.Elect(1);
  c.Propose(1, "a");
  c.Propose(1, "b");
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(c.applied_data(id), (std::vector<std::string>{"a", "b"})) << id;
  }
}

TEST(ReplicationTest, ProbeBecomesReplicateAfterFirstAck) {
  TestCluster c(3);
  c.Elect(1);
  EXPECT_EQ(c.node(1).ProgressOf(NodeId(2))->state, ProgressState::kReplicate);
}

TEST(ReplicationTest, InflightCountLimitPausesPipelining) {
  NodeOptions options;
  options.max_inflight_appends = 2;
  TestCluster c(3, options);
  c.Elect(1);
  c.Cut(2, 1);  // acks from 2 are lost
  c.Cut(3, 1);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(c.node(1).Propose({"x"}, c.now()).ok());
  }
  c.Stabilize();
  const Progress* pr = c.node(1).ProgressOf(NodeId(2));
  EXPECT_EQ(pr->inflights.count(), 2u);
  EXPECT_TRUE(pr->IsPaused());
  EXPECT_LT(c.node(2).last_index(), c.node(1).last_index());
}

TEST(ReplicationTest, InflightByteLimitPausesPipelining) {
  NodeOptions options;
  options.max_inflight_bytes = 1000;
  TestCluster c(3, options);
  c.Elect(1);
  c.Cut(2, 1);
  ASSERT_TRUE(c.node(1).Propose({std::string(2000, 'x')}, c.now()).ok());
  ASSERT_TRUE(c.node(1).Propose({"small"}, c.now()).ok());
  c.Stabilize();
  EXPECT_TRUE(c.node(1).ProgressOf(NodeId(2))->IsPaused());
  EXPECT_EQ(c.node(2).last_index(), c.node(1).last_index() - 1);
}

TEST(ReplicationTest, DivergentFollowerIsRepairedInFewRoundTrips) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(1);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(c.node(1).Propose({"stale"}, c.now()).ok());  // never committed
  }
  c.Stabilize();
  for (int i = 0; i < 60 && c.node(2).role() != Role::kLeader && c.node(3).role() != Role::kLeader;
       ++i) {
    c.TickAll(1);
  }
  const uint64_t leader = c.node(2).role() == Role::kLeader ? 2 : 3;
  ASSERT_EQ(c.node(leader).role(), Role::kLeader);
  c.Propose(leader, "fresh");
  const int rejected_before = c.rejected_appends();
  c.Heal();
  c.TickAll(3);
  EXPECT_EQ(c.node(1).last_index(), c.node(leader).last_index());
  EXPECT_EQ(c.applied_data(1).back(), "fresh");
  // One rejection skips the whole stale term instead of one per stale entry.
  EXPECT_LE(c.rejected_appends() - rejected_before, 2);
}

// ---- ReadIndex -------------------------------------------------------------------------------

TEST(ReadIndexTest, ReturnsCommitIndexAfterQuorumConfirmsLeadership) {
  TestCluster c(3);
  c.Elect(1);
  c.Propose(1, "a");
  ASSERT_TRUE(c.node(1).ReadIndex("r1").ok());
  c.Stabilize();
  ASSERT_EQ(c.read_states(1).size(), 1u);
  EXPECT_EQ(c.read_states(1)[0].context, "r1");
  EXPECT_EQ(c.read_states(1)[0].index, c.node(1).commit());
}

TEST(ReadIndexTest, AnswerToAnEarlierRoundDoesNotConfirmALaterReadWithTheSameContext) {
  TestCluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ReadIndex("r").ok());
  c.ProcessReady(NodeId(1));  // heartbeats for the read
  // Node 3 answers, but its answer is held up in the network.
  auto to_3 = std::find_if(c.in_flight().begin(), c.in_flight().end(),
                           [](const Message& m) { return m.to == NodeId(3); });
  ASSERT_NE(to_3, c.in_flight().end());
  const Message heartbeat = *to_3;
  c.in_flight().erase(to_3);
  c.node(3).Step(heartbeat);
  c.Cut(3, 1);
  c.Stabilize();  // node 2's answer confirms the read
  ASSERT_EQ(c.read_states(1).size(), 1u);
  // A later read reuses the context; nobody answers it, but the old answer arrives now.
  c.Cut(2, 1);
  ASSERT_TRUE(c.node(1).ReadIndex("r").ok());
  c.Stabilize();
  Message late;
  late.type = MessageType::kHeartbeatResponse;
  late.from = NodeId(3);
  late.to = NodeId(1);
  late.term = c.node(1).term();
  late.context = heartbeat.context;
  c.node(1).Step(late);
  c.Stabilize();
  // It proves leadership only before the read was asked for: no read point yet.
  EXPECT_EQ(c.read_states(1).size(), 1u);
}

TEST(ReadIndexTest, NoReadStateWithoutQuorum) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(1);
  ASSERT_TRUE(c.node(1).ReadIndex("r1").ok());
  c.Stabilize();
  EXPECT_TRUE(c.read_states(1).empty());
}

TEST(ReadIndexTest, WaitsForFirstCommitOfLeadersTerm) {
  TestCluster c(3);
  c.node(1).Campaign();
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).role() == Role::kLeader; }));
  ASSERT_TRUE(c.node(1).ReadIndex("r").ok());
  EXPECT_FALSE(c.node(1).commit() >= c.node(1).last_index());
  c.Stabilize();
  ASSERT_EQ(c.read_states(1).size(), 1u);
  EXPECT_EQ(c.read_states(1)[0].index, c.node(1).last_index());  // includes the empty entry
}

TEST(ReadIndexTest, SingleVoterAnswersWithoutHeartbeats) {
  TestCluster c(1);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ReadIndex("r").ok());
  c.Stabilize();
  ASSERT_EQ(c.read_states(1).size(), 1u);
  EXPECT_EQ(c.read_states(1)[0].index, c.node(1).commit());
}

TEST(ReadIndexTest, FollowerRefusesReadIndex) {
  TestCluster c(3);
  c.Elect(1);
  EXPECT_EQ(c.node(2).ReadIndex("r").code(), absl::StatusCode::kFailedPrecondition);
}

// ---- Leadership transfer ---------------------------------------------------------------------

TEST(TransferTest, TransfersToCaughtUpFollower) {
  TestCluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).TransferLeadership(NodeId(2)).ok());
  c.Stabilize();
  EXPECT_EQ(c.node(2).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
}

TEST(TransferTest, WaitsForTargetToCatchUpFirst) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(3);
  c.Propose(1, "a");
  c.Heal();
  ASSERT_TRUE(c.node(1).TransferLeadership(NodeId(3)).ok());
  c.Stabilize();
  EXPECT_EQ(c.node(3).role(), Role::kLeader);
  EXPECT_EQ(c.applied_data(3), std::vector<std::string>{"a"});
}

TEST(TransferTest, RejectsProposalsWhileTransferring) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(2);
  ASSERT_TRUE(c.node(1).TransferLeadership(NodeId(2)).ok());
  EXPECT_EQ(c.node(1).Propose({"x"}, c.now()).status().code(), absl::StatusCode::kUnavailable);
}

TEST(TransferTest, AbortsAfterElectionTimeout) {
  TestCluster c(3);
  c.Elect(1);
  c.Cut(1, 2);
  ASSERT_TRUE(c.node(1).TransferLeadership(NodeId(2)).ok());
  c.Stabilize();
  for (int i = 0; i < 10; ++i) {
    c.Tick(1, 1);
    c.Stabilize();
  }
  EXPECT_EQ(c.node(1).lead_transferee(), kNoNode);
  EXPECT_TRUE(c.node(1).Propose({"x"}, c.now()).ok());
}

TEST(TransferTest, RejectsLearnerAsTarget) {
  TestCluster c(3);
  c.Elect(1);
  EXPECT_FALSE(c.node(1).TransferLeadership(NodeId(9)).ok());
}

// ---- Snapshots -------------------------------------------------------------------------------

TEST(SnapshotTest, FollowerBehindCompactionPointGetsSnapshot) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(3);
  for (int i = 0; i < 5; ++i) {
    c.Propose(1, std::to_string(i));
  }
  const LogIndex applied = c.node(1).applied();
  ASSERT_TRUE(c.storage(1).CreateSnapshot(applied, c.node(1).conf_state(), "image").ok());
  ASSERT_TRUE(c.storage(1).Compact(applied).ok());
  c.Heal();
  c.Propose(1, "after");
  EXPECT_EQ(c.storage(3).GetSnapshot()->data, "image");
  EXPECT_EQ(c.storage(3).GetSnapshot()->meta.index, applied);
  EXPECT_EQ(c.applied_data(3), std::vector<std::string>{"after"});
  EXPECT_EQ(c.node(3).commit(), c.node(1).commit());
}

TEST(SnapshotTest, LostSnapshotIsResent) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(3);
  c.Propose(1, "a");
  const LogIndex applied = c.node(1).applied();
  ASSERT_TRUE(c.storage(1).CreateSnapshot(applied, c.node(1).conf_state(), "img").ok());
  ASSERT_TRUE(c.storage(1).Compact(applied).ok());
  c.Heal();
  c.Tick(1, 1);  // heartbeat; node 3's answer prompts the snapshot
  ASSERT_TRUE(c.RunUntil(
      [&] { return c.node(1).ProgressOf(NodeId(3))->state == ProgressState::kSnapshot; }));
  c.RunUntil([&] { return !c.node(1).HasReady(); });
  std::erase_if(c.in_flight(), [](const Message& m) { return m.type == MessageType::kSnapshot; });
  c.Stabilize();
  ASSERT_NE(c.storage(3).GetSnapshot()->data, "img");
  c.TickAll(12);
  EXPECT_EQ(c.storage(3).GetSnapshot()->data, "img");
}

TEST(SnapshotTest, SnapshotCarriesMembership) {
  TestCluster c(3);
  c.Elect(1);
  c.AddFreshNode(4);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, NodeId(4)}, c.now()).ok());
  c.Isolate(4);
  c.Stabilize();
  const LogIndex applied = c.node(1).applied();
  ASSERT_TRUE(c.storage(1).CreateSnapshot(applied, c.node(1).conf_state(), "img").ok());
  ASSERT_TRUE(c.storage(1).Compact(applied).ok());
  c.Heal();
  c.TickAll(3);
  EXPECT_EQ(c.node(4).conf_state(), c.node(1).conf_state());
  EXPECT_EQ(c.node(4).commit(), c.node(1).commit());
}

// ---- Membership ------------------------------------------------------------------------------

TEST(MembershipTest, LearnerReplicatesButDoesNotVoteOrCampaign) {
  TestCluster c(3);
  c.Elect(1);
  c.AddFreshNode(4);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, NodeId(4)}, c.now()).ok());
  c.TickAll(3);
  c.Propose(1, "x");
  EXPECT_EQ(c.applied_data(4), std::vector<std::string>{"x"});
  EXPECT_EQ(c.node(1).conf_state().learners, std::vector<NodeId>{NodeId(4)});
  c.node(4).Campaign();
  EXPECT_EQ(c.node(4).role(), Role::kFollower);
}

TEST(MembershipTest, PromotedLearnerCountsTowardsQuorum) {
  TestCluster c(3);
  c.Elect(1);
  c.AddFreshNode(4);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, NodeId(4)}, c.now()).ok());
  c.TickAll(3);
  ASSERT_TRUE(
      c.node(1).ProposeConfChange({ConfChangeType::kPromoteVoter, NodeId(4)}, c.now()).ok());
  c.Stabilize();
  ASSERT_EQ(c.node(1).conf_state().voters.size(), 4u);
  // With 4 voters, 1 and 2 alone (2 of 4) cannot commit; 1, 2 and 4 can.
  c.Isolate(3);
  c.Isolate(4);
  const LogIndex before = c.node(1).commit();
  ASSERT_TRUE(c.node(1).Propose({"y"}, c.now()).ok());
  c.Stabilize();
  EXPECT_EQ(c.node(1).commit(), before);
  c.Heal();
  c.Isolate(3);
  c.TickAll(2);
  EXPECT_GT(c.node(1).commit(), before);
}

TEST(MembershipTest, PromotionRequiresLearner) {
  TestCluster c(3);
  c.Elect(1);
  EXPECT_EQ(c.node(1)
                .ProposeConfChange({ConfChangeType::kPromoteVoter, NodeId(7)}, c.now())
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c.node(1)
                .ProposeConfChange({ConfChangeType::kAddLearner, NodeId(2)}, c.now())
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(MembershipTest, RejectsSecondChangeWhileOneIsPending) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(2);
  c.Isolate(3);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, NodeId(4)}, c.now()).ok());
  EXPECT_EQ(c.node(1)
                .ProposeConfChange({ConfChangeType::kAddLearner, NodeId(5)}, c.now())
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MembershipTest, NewLeaderMustCommitOwnTermEntryBeforeChange) {
  TestCluster c(3);
  c.node(1).Campaign();
  ASSERT_TRUE(c.RunUntil([&] { return c.node(1).role() == Role::kLeader; }));
  const ConfChange add{ConfChangeType::kAddLearner, NodeId(4)};
  EXPECT_EQ(c.node(1).ProposeConfChange(add, c.now()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  c.Stabilize();
  EXPECT_TRUE(c.node(1).ProposeConfChange(add, c.now()).ok());
}

TEST(MembershipTest, RemovedNodeCannotDisruptCluster) {
  TestCluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemove, NodeId(3)}, c.now()).ok());
  c.Isolate(3);  // node 3 never learns it was removed
  c.Stabilize();
  ASSERT_EQ(c.node(1).conf_state().voters.size(), 2u);
  const Term term = c.node(1).term();
  c.Heal();
  for (int i = 0; i < 60; ++i) {
    c.TickAll(1);
  }
  EXPECT_EQ(c.node(1).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).term(), term);
  EXPECT_EQ(c.node(2).term(), term);
}

TEST(MembershipTest, LeaderCannotRemoveItself) {
  TestCluster c(3);
  c.Elect(1);
  EXPECT_EQ(
      c.node(1).ProposeConfChange({ConfChangeType::kRemove, NodeId(1)}, c.now()).status().code(),
      absl::StatusCode::kFailedPrecondition);
}

TEST(MembershipTest, ChangeTakesEffectWhenAppendedNotWhenApplied) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(2);
  c.Isolate(3);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, NodeId(4)}, c.now()).ok());
  EXPECT_EQ(c.node(1).effective_conf_state().learners, std::vector<NodeId>{NodeId(4)});
  EXPECT_TRUE(c.node(1).conf_state().learners.empty());  // not applied yet
  EXPECT_NE(c.node(1).ProgressOf(NodeId(4)), nullptr);
}

TEST(MembershipTest, FollowerForgetsChangeFromTruncatedSuffix) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(1);
  // The isolated leader appends a removal only it holds; node 2 then leads a new term.
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemove, NodeId(3)}, c.now()).ok());
  c.Stabilize();
  ASSERT_EQ(c.node(1).effective_conf_state().voters.size(), 2u);
  for (int i = 0; i < 60 && c.node(2).role() != Role::kLeader && c.node(3).role() != Role::kLeader;
       ++i) {
    c.TickAll(1);
  }
  const uint64_t leader = c.node(2).role() == Role::kLeader ? 2 : 3;
  ASSERT_EQ(c.node(leader).role(), Role::kLeader);
  c.Propose(leader, "x");
  c.Heal();
  c.TickAll(3);
  EXPECT_EQ(c.node(1).effective_conf_state().voters.size(), 3u);
}

TEST(MembershipTest, RemovingVoterShrinksQuorum) {
  TestCluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemove, NodeId(3)}, c.now()).ok());
  c.Stabilize();
  c.Isolate(3);
  c.Propose(1, "x");
  EXPECT_EQ(c.applied_data(2), std::vector<std::string>{"x"});
}

// ---- Cluster time ----------------------------------------------------------------------------

TEST(ClusterTimeTest, EntriesCarryLeadersTime) {
  TestCluster c(3);
  c.Elect(1);
  const absl::Time t = c.now() + absl::Seconds(5);
  ASSERT_TRUE(c.node(1).Propose({"x"}, t).ok());
  c.Stabilize();
  EXPECT_EQ(c.applied(2).back().time, t);
}

TEST(ClusterTimeTest, StampSurvivesTheWireUnchanged) {
  // Followers get entries through the wire form, which holds microseconds: a finer stamp would
  // give the leader's state machine a different `now` from everyone else's.
  TestCluster c(3);
  c.Elect(1);
  const absl::Time t = c.now() + absl::Seconds(5) + absl::Nanoseconds(1500);
  ASSERT_TRUE(c.node(1).Propose({"x"}, t).ok());
  c.Stabilize();
  const Entry& stamped = c.applied(1).back();
  absl::StatusOr<Entry> received = FromWire(ToWire(stamped));
  ASSERT_TRUE(received.ok());
  EXPECT_EQ(received->time, stamped.time);
  EXPECT_GE(stamped.time, t - absl::Microseconds(1));
}

TEST(ClusterTimeTest, NewLeaderWithSlowerClockNeverGoesBack) {
  TestCluster c(3);
  c.Elect(1);
  const absl::Time ahead = c.now() + absl::Hours(1);
  ASSERT_TRUE(c.node(1).Propose({"x"}, ahead).ok());
  c.Stabilize();
  ASSERT_TRUE(c.node(1).TransferLeadership(NodeId(2)).ok());
  c.Stabilize();
  ASSERT_EQ(c.node(2).role(), Role::kLeader);
  c.Propose(2, "y");  // node 2's own clock is an hour behind
  const std::vector<Entry>& applied = c.applied(3);
  for (size_t i = 1; i < applied.size(); ++i) {
    EXPECT_GE(applied[i].time, applied[i - 1].time);
  }
  EXPECT_GE(applied.back().time, ahead);
}

// ---- Restart ---------------------------------------------------------------------------------

TEST(RestartTest, KeepsPersistedStateAndLosesTheRest) {
  TestCluster c(3);
  c.Elect(1);
  c.Propose(1, "a");
  const Term term = c.node(2).term();
  const LogIndex last = c.node(2).last_index();
  c.Restart(2);
  EXPECT_EQ(c.node(2).term(), term);
  EXPECT_EQ(c.node(2).last_index(), last);
  EXPECT_EQ(c.node(2).vote(), NodeId(1));
  c.TickAll(2);
  EXPECT_EQ(c.applied_data(2), std::vector<std::string>{"a"});  // re-applied after restart
}

TEST(RestartTest, UnpersistedEntriesAreLostOnCrash) {
  TestCluster c(3);
  c.Elect(1);
  c.Isolate(2);
  c.Isolate(3);
  ASSERT_TRUE(c.node(1).Propose({"lost"}, c.now()).ok());
  const LogIndex before = c.storage(1).LastIndex();
  c.Restart(1);  // the Ready holding "lost" was never persisted
  EXPECT_EQ(c.node(1).last_index(), before);
}

TEST(RestartTest, RejectsCorruptStorage) {
  MemoryLogStorage storage;
  ASSERT_TRUE(Bootstrap(storage, ConfState{{NodeId(1)}, {}}).ok());
  ASSERT_TRUE(storage.SetHardState(HardState{Term(1), kNoNode, LogIndex(5)}).ok());
  NodeOptions options;
  options.id = NodeId(1);
  EXPECT_FALSE(Node::Create(options, &storage).ok());
}

}  // namespace
}  // namespace backstop::raft
