#include "server/storage/records.h"

#include "common/printable.h"

namespace coldfuse::storage {
namespace {

void ToEntries(const v1::Manifest& m, google::protobuf::RepeatedPtrField<TensorEntry>* out) {
  for (const auto& t : m.tensors()) {
    TensorEntry* e = out->Add();
    e->set_name(t.name());
    e->set_dtype(static_cast<uint32_t>(t.dtype()));
    *e->mutable_shape() = t.shape();
  }
}

v1::Manifest FromEntries(const google::protobuf::RepeatedPtrField<TensorEntry>& entries) {
  v1::Manifest m;
  for (const auto& e : entries) {
    v1::TensorSpec* t = m.add_tensors();
    t->set_name(e.name());
    t->set_dtype(static_cast<v1::DType>(e.dtype()));
    *t->mutable_shape() = e.shape();
  }
  return m;
}

}  // namespace

ModelRecord ToRecord(const v1::ModelInfo& model) {
  ModelRecord r;
  r.set_model_spec(model.model_spec());
  ToEntries(model.manifest(), r.mutable_tensors());
  r.set_fusion_method(static_cast<uint32_t>(model.fusion_method()));
  r.set_total_bytes(model.total_bytes());
  r.set_trim_fraction(model.fusion_options().trim_fraction());
  r.set_clip_factor(model.fusion_options().clip_factor());
  r.set_accumulate_f64(model.fusion_options().accumulate_f64());
  r.set_merge_scale(model.fusion_options().merge_scale());
  r.set_ties_density(model.fusion_options().ties_density());
  r.set_dare_drop_rate(model.fusion_options().dare_drop_rate());
  r.set_dare_seed(model.fusion_options().dare_seed());
  if (model.outer_optimizer() != v1::OUTER_OPTIMIZER_UNSPECIFIED) {
    OptimizerConfig* o = r.mutable_optimizer();
    const v1::OuterOptimizerOptions& opt = model.outer_optimizer_options();
    o->set_kind(static_cast<uint32_t>(model.outer_optimizer()));
    if (opt.has_learning_rate()) o->set_learning_rate(opt.learning_rate());
    if (opt.has_momentum()) o->set_momentum(opt.momentum());
    if (opt.has_beta1()) o->set_beta1(opt.beta1());
    if (opt.has_beta2()) o->set_beta2(opt.beta2());
    if (opt.has_tau()) o->set_tau(opt.tau());
    if (opt.has_bias_correction()) o->set_bias_correction(opt.bias_correction());
  }
  return r;
}

v1::ModelInfo FromRecord(const ModelRecord& r) {
  v1::ModelInfo m;
  m.set_model_spec(r.model_spec());
  *m.mutable_manifest() = FromEntries(r.tensors());
  m.set_fusion_method(static_cast<v1::FusionMethod>(r.fusion_method()));
  m.set_total_bytes(r.total_bytes());
  m.mutable_fusion_options()->set_trim_fraction(r.trim_fraction());
  m.mutable_fusion_options()->set_clip_factor(r.clip_factor());
  m.mutable_fusion_options()->set_accumulate_f64(r.accumulate_f64());
  m.mutable_fusion_options()->set_merge_scale(r.merge_scale());
  m.mutable_fusion_options()->set_ties_density(r.ties_density());
  m.mutable_fusion_options()->set_dare_drop_rate(r.dare_drop_rate());
  m.mutable_fusion_options()->set_dare_seed(r.dare_seed());
  if (r.has_optimizer()) {
    const OptimizerConfig& o = r.optimizer();
    v1::OuterOptimizerOptions* opt = m.mutable_outer_optimizer_options();
    m.set_outer_optimizer(static_cast<v1::OuterOptimizer>(o.kind()));
    if (o.has_learning_rate()) opt->set_learning_rate(o.learning_rate());
    if (o.has_momentum()) opt->set_momentum(o.momentum());
    if (o.has_beta1()) opt->set_beta1(o.beta1());
    if (o.has_beta2()) opt->set_beta2(o.beta2());
    if (o.has_tau()) opt->set_tau(o.tau());
    if (o.has_bias_correction()) opt->set_bias_correction(o.bias_correction());
    if (opt->ByteSizeLong() == 0) m.clear_outer_optimizer_options();
  }
  return m;
}

ContributionRecord ToRecord(const v1::ContributionInfo& info) {
  ContributionRecord r;
  r.set_id(info.id());
  r.set_contributor(info.contributor());
  r.set_task(info.task());
  r.set_num_examples(info.num_examples());
  r.mutable_metrics()->insert(info.metrics().begin(), info.metrics().end());
  r.set_sha256(info.sha256());
  r.set_bytes(info.bytes());
  r.set_received_unix_ms(info.received_unix_ms());
  r.set_delta_norm(info.delta_norm());
  r.set_state(static_cast<uint32_t>(info.state()));
  r.set_quarantine_reason(info.quarantine_reason());
  r.set_encoding(static_cast<uint32_t>(info.encoding()));
  r.set_int8_block_size(info.int8_block_size());
  ToEntries(info.manifest(), r.mutable_tensors());
  r.set_trained_from_base(info.trained_from_base());
  r.set_staleness(info.staleness());
  // 0 is no weight and no round: not known (read back as 1 and the record's round).
  if (info.staleness_weight() != 0) r.set_staleness_weight(info.staleness_weight());
  if (info.upload_round() != 0) r.set_upload_round(info.upload_round());
  return r;
}

v1::ContributionInfo FromRecord(const ContributionRecord& r, uint64_t round, uint64_t round_base) {
  v1::ContributionInfo info;
  info.set_id(r.id());
  info.set_contributor(r.contributor());
  info.set_task(r.task());
  info.set_num_examples(r.num_examples());
  info.mutable_metrics()->insert(r.metrics().begin(), r.metrics().end());
  info.set_sha256(r.sha256());
  info.set_bytes(r.bytes());
  info.set_received_unix_ms(r.received_unix_ms());
  info.set_delta_norm(r.delta_norm());
  info.set_state(static_cast<v1::ContributionState>(r.state()));
  info.set_quarantine_reason(r.quarantine_reason());
  info.set_encoding(static_cast<v1::Encoding>(r.encoding()));
  info.set_int8_block_size(r.int8_block_size());
  *info.mutable_manifest() = FromEntries(r.tensors());
  info.set_trained_from_base(r.has_trained_from_base() ? r.trained_from_base() : round_base);
  info.set_staleness(r.staleness());
  info.set_staleness_weight(r.has_staleness_weight() ? r.staleness_weight() : 1.0);
  info.set_upload_round(r.has_upload_round() ? r.upload_round() : round);
  return info;
}

RoundRecord ToRecord(const v1::RoundInfo& round) {
  RoundRecord r;
  r.set_number(round.number());
  r.set_base_version(round.base_version());
  r.set_state(static_cast<uint32_t>(round.state()));
  r.set_opened_unix_ms(round.opened_unix_ms());
  r.set_closed_unix_ms(round.closed_unix_ms());
  r.set_result_base_version(round.result_base_version());
  r.set_close_reason(round.close_reason());
  r.set_contributions_pruned(round.contributions_pruned());
  r.set_fusion_duration_ms(round.fusion_duration_ms());
  return r;
}

v1::RoundInfo FromRecord(const RoundRecord& r) {
  v1::RoundInfo round;
  round.set_number(r.number());
  round.set_base_version(r.base_version());
  round.set_state(static_cast<v1::RoundState>(r.state()));
  round.set_opened_unix_ms(r.opened_unix_ms());
  round.set_closed_unix_ms(r.closed_unix_ms());
  round.set_result_base_version(r.result_base_version());
  round.set_close_reason(r.close_reason());
  round.set_contributions_pruned(r.contributions_pruned());
  round.set_fusion_duration_ms(r.fusion_duration_ms());
  return round;
}

EvaluationRecord ToRecord(const v1::Evaluation& e) {
  EvaluationRecord r;
  r.set_base_version(e.base_version());
  r.set_task(e.task());
  r.set_metric(e.metric());
  r.set_value(e.value());
  r.set_num_train_examples(e.num_train_examples());
  r.set_num_eval_examples(e.num_eval_examples());
  r.set_evaluator(e.evaluator());
  r.set_recorded_unix_ms(e.recorded_unix_ms());
  r.set_task_seen(e.task_seen());
  return r;
}

v1::Evaluation FromRecord(const EvaluationRecord& r) {
  v1::Evaluation e;
  e.set_base_version(r.base_version());
  e.set_task(r.task());
  e.set_metric(r.metric());
  e.set_value(r.value());
  e.set_num_train_examples(r.num_train_examples());
  e.set_num_eval_examples(r.num_eval_examples());
  e.set_evaluator(r.evaluator());
  e.set_recorded_unix_ms(r.recorded_unix_ms());
  e.set_task_seen(r.task_seen());
  return e;
}

TokenRecord ToRecord(const StoredToken& token) {
  TokenRecord r;
  r.set_name(token.info.name());
  r.set_secret_sha256(token.secret_sha256);
  r.set_role(static_cast<uint32_t>(token.info.role()));
  r.set_created_unix_ms(token.info.created_unix_ms());
  r.set_expires_unix_ms(token.info.expires_unix_ms());
  r.set_revoked(token.info.revoked());
  return r;
}

StoredToken FromRecord(const TokenRecord& r) {
  StoredToken t;
  t.secret_sha256 = r.secret_sha256();
  t.info.set_name(r.name());
  t.info.set_role(static_cast<v1::Role>(r.role()));
  t.info.set_created_unix_ms(r.created_unix_ms());
  t.info.set_expires_unix_ms(r.expires_unix_ms());
  t.info.set_revoked(r.revoked());
  return t;
}

// Audit text often quotes what a client sent (a rejected name, a reason): stored and
// served escaped and bounded, also when read from a folder written before the bound.
AuditEntry ToRecord(const v1::AuditRecord& rec) {
  AuditEntry r;
  r.set_unix_ms(rec.unix_ms());
  r.set_actor(PrintableTruncated(rec.actor(), kAuditNameMaxBytes));
  r.set_action(PrintableTruncated(rec.action(), kAuditNameMaxBytes));
  r.set_detail(PrintableTruncated(rec.detail(), kAuditDetailMaxBytes));
  return r;
}

v1::AuditRecord FromRecord(const AuditEntry& r, uint64_t seq) {
  v1::AuditRecord rec;
  rec.set_seq(seq);
  rec.set_unix_ms(r.unix_ms());
  rec.set_actor(PrintableTruncated(r.actor(), kAuditNameMaxBytes));
  rec.set_action(PrintableTruncated(r.action(), kAuditNameMaxBytes));
  rec.set_detail(PrintableTruncated(r.detail(), kAuditDetailMaxBytes));
  return rec;
}

UploadSession ToRecord(const StoredUpload& upload) {
  const v1::ContributionHeader& h = upload.header;
  UploadSession r;
  r.set_contribution_id(upload.contribution_id);
  r.set_round(h.round());
  if (upload.upload_round != 0) r.set_upload_round(upload.upload_round);  // 0: not known
  r.set_base_version(h.base_version());
  r.set_contributor(h.contributor());
  r.set_task(h.task());
  r.set_num_examples(h.num_examples());
  r.mutable_metrics()->insert(h.metrics().begin(), h.metrics().end());
  ToEntries(h.manifest(), r.mutable_tensors());
  r.set_upload_id(h.upload_id());
  r.set_encoding(static_cast<uint32_t>(h.encoding()));
  r.set_int8_block_size(h.int8_block_size());
  return r;
}

StoredUpload FromRecord(const UploadSession& r) {
  StoredUpload u;
  u.contribution_id = r.contribution_id();
  v1::ContributionHeader& h = u.header;
  h.set_round(r.round());
  h.set_base_version(r.base_version());
  h.set_contributor(r.contributor());
  h.set_task(r.task());
  h.set_num_examples(r.num_examples());
  h.mutable_metrics()->insert(r.metrics().begin(), r.metrics().end());
  *h.mutable_manifest() = FromEntries(r.tensors());
  h.set_upload_id(r.upload_id());
  h.set_encoding(static_cast<v1::Encoding>(r.encoding()));
  h.set_int8_block_size(r.int8_block_size());
  u.upload_round = r.has_upload_round() ? r.upload_round() : r.round();
  return u;
}

UploadProgress ToRecord(const StoredUpload::Progress& progress) {
  UploadProgress r;
  r.set_next_tensor(progress.next_tensor);
  r.set_next_offset(progress.next_offset);
  r.set_bytes_stored(progress.bytes_stored);
  r.set_sum_sq(progress.sum_sq);
  return r;
}

StoredUpload::Progress FromRecord(const UploadProgress& r) {
  StoredUpload::Progress p;
  p.next_tensor = r.next_tensor();
  p.next_offset = r.next_offset();
  p.bytes_stored = r.bytes_stored();
  p.sum_sq = r.sum_sq();
  return p;
}

}  // namespace coldfuse::storage
