# backstop_raft_storage — the Raft log storage in RocksDB and the fault-injecting file system
# its tests (and later the chaos tests) use. Included from the top-level CMakeLists.txt until it
# is folded into queue/CMakeLists.txt.
add_library(backstop_raft_storage
  ${PROJECT_SOURCE_DIR}/queue/fault_injection.cc
  ${PROJECT_SOURCE_DIR}/queue/raft_storage.cc
)
add_library(backstop::raft_storage ALIAS backstop_raft_storage)
target_link_libraries(backstop_raft_storage
  PUBLIC
    backstop::raft
    backstop::common
    RocksDB::rocksdb
  PRIVATE
    backstop_warnings
)
