// cuffwatch reference cuff: the telemetry contract and the cuff's own safety logic.
//
// Plain C++17 with no ESPHome dependency, so the same code runs in the firmware (cuff.yaml
// includes it and calls it from its lambdas) and on a PC, where
// tests/unit/test_esphome_device.py compiles it with g++ and feeds what it prints to
// the gateway's own decoder (gateway/decode.py). The contract is docs/contract.md,
// "Sending readings"; the device maker's view of it is docs/device-makers.md.
//
// What lives here:
//   - Reading and to_json(): one reading object, exactly the contract's field names;
//   - ReadingBuffer: a ring of the last 256 readings (the contract's batch limit), sent as one
//     object (one reading) or one JSON array (several) once MQTT is connected again;
//   - Bout: `inflated` and `elapsed_s`, which resets to 0 at deflation;
//   - Safety: the device's own over-pressure / over-time / sensor cut-off (a last line behind
//     the gateway's alerts and a mechanical relief valve, never a substitute for either);
//   - assignment_target(): the prescribed target from a retained assignment message.
//
// seq restarts from 0 at every boot (SPEC v2 §4 allows it: the gateway never drops a
// restarted cuff's readings as duplicates, and a restart is no sensor fault). It is not
// persisted: writing flash several times a second wears it out.
#pragma once

#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/time.h>

namespace cuffwatch {

// docs/contract.md: "A message holds one object or an array of up to 256".
constexpr size_t MAX_BATCH = 256;
// The contract's plausible sensor range; outside it the gateway raises sensor_fault.
constexpr float PLAUSIBLE_MIN_MMHG = -20.0f;
constexpr float PLAUSIBLE_MAX_MMHG = 600.0f;

// One sample, as taken. `taken_ms` is the device's uptime clock (millis()), so a reading
// taken before SNTP has synchronised still gets a correct `ts` once it has.
struct Reading {
  uint32_t taken_ms = 0;
  uint32_t seq = 0;
  float pressure_mmhg = 0.0f;
  float elapsed_s = 0.0f;
  bool inflated = false;
  float battery_pct = NAN;  // NaN: unknown, the field is left out
  float target_mmhg = NAN;  // NaN or <= 0: not regulating, the field is left out
};

inline void append_u64(std::string &out, uint64_t value) {
  char digits[21];
  size_t n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  while (n > 0) out.push_back(digits[--n]);
}

// A number with one decimal ("182.4", "-3.0"), written by hand: no dependence on the C
// library's float formatting (ESP-IDF may link a printf without it), and never NaN or
// infinity, which JSON has not and which get a whole message rejected. Magnitudes are capped
// at 1e9: still far outside the plausible range, so the gateway raises sensor_fault.
inline void append_number(std::string &out, float value) {
  double v = std::isfinite(value) ? static_cast<double>(value) : 0.0;
  if (v > 1e9) v = 1e9;
  if (v < -1e9) v = -1e9;
  int64_t tenths = static_cast<int64_t>(std::llround(v * 10.0));
  if (tenths < 0) {
    out.push_back('-');
    tenths = -tenths;
  }
  append_u64(out, static_cast<uint64_t>(tenths / 10));
  out.push_back('.');
  out.push_back(static_cast<char>('0' + tenths % 10));
}

// The wall clock in epoch milliseconds: SNTP sets it on the ESP32 (check that the time
// component has synchronised before trusting it).
inline int64_t epoch_ms_now() {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  return static_cast<int64_t>(tv.tv_sec) * 1000 + static_cast<int64_t>(tv.tv_usec) / 1000;
}

inline float clamp(float value, float lo, float hi) { return value < lo ? lo : (value > hi ? hi : value); }

// One reading object, e.g.
// {"ts":1795000000123,"seq":41,"pressure_mmhg":182.4,"elapsed_s":95.3,"inflated":true,"battery_pct":87.0,"target_mmhg":180.0}
// `ts` is epoch milliseconds (SNTP time); optional fields are left out when unknown and
// clamped to the contract's ranges, since one out-of-range field rejects the whole message.
inline void to_json(std::string &out, const Reading &r, int64_t ts_ms) {
  out += "{\"ts\":";
  append_u64(out, ts_ms > 0 ? static_cast<uint64_t>(ts_ms) : 0);
  out += ",\"seq\":";
  append_u64(out, r.seq);
  out += ",\"pressure_mmhg\":";
  append_number(out, r.pressure_mmhg);
  out += ",\"elapsed_s\":";
  append_number(out, r.elapsed_s > 0.0f ? r.elapsed_s : 0.0f);
  out += ",\"inflated\":";
  out += r.inflated ? "true" : "false";
  if (std::isfinite(r.battery_pct)) {
    out += ",\"battery_pct\":";
    append_number(out, clamp(r.battery_pct, 0.0f, 100.0f));
  }
  if (std::isfinite(r.target_mmhg) && r.target_mmhg > 0.0f) {
    out += ",\"target_mmhg\":";
    append_number(out, clamp(r.target_mmhg, 0.0f, 1000.0f));
  }
  out += '}';
}

// The readings not yet handed to MQTT, oldest first. While MQTT is down it holds the newest
// MAX_BATCH readings; past that the oldest is dropped (the gap in `seq` shows it).
class ReadingBuffer {
 public:
  void push(const Reading &r) {
    if (count_ == MAX_BATCH) {
      head_ = (head_ + 1) % MAX_BATCH;
      --count_;
      ++dropped_;
    }
    ring_[(head_ + count_) % MAX_BATCH] = r;
    ++count_;
  }
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  uint32_t dropped() const { return dropped_; }
  const Reading &at(size_t i) const { return ring_[(head_ + i) % MAX_BATCH]; }
  void clear() { head_ = count_ = 0; }

  // Everything buffered, as one message: a single object for one reading, a JSON array for
  // several (at most 256, about 33 KiB: under the contract's 64 KiB). Each `ts` is the SNTP
  // time now minus the reading's age on the uptime clock (unsigned arithmetic: right across
  // millis() wrapping after 49.7 days).
  std::string payload(int64_t now_epoch_ms, uint32_t now_ms) const {
    std::string out;
    out.reserve(count_ * 132 + 2);
    if (count_ > 1) out += '[';
    for (size_t i = 0; i < count_; ++i) {
      const Reading &r = at(i);
      if (i > 0) out += ',';
      uint32_t age_ms = now_ms - r.taken_ms;
      to_json(out, r, now_epoch_ms - static_cast<int64_t>(age_ms));
    }
    if (count_ > 1) out += ']';
    return out;
  }

 private:
  Reading ring_[MAX_BATCH];
  size_t head_ = 0;
  size_t count_ = 0;
  uint32_t dropped_ = 0;
};

// A bout: from inflation (elapsed_s counting up from 0) to deflation. The cuff is inflated
// while it is told to be (the inflate switch) or while its pressure says so (hysteresis:
// from START_MMHG up until it falls under END_MMHG), so a cuff pumped by hand, or one whose
// valve stuck, still reports the truth. At deflation elapsed_s goes back to 0.
class Bout {
 public:
  static constexpr float START_MMHG = 20.0f;
  static constexpr float END_MMHG = 10.0f;

  // A pressure that is not a number (the sensor did not answer) leaves the pressure's
  // verdict as it was.
  void update(uint32_t now_ms, float pressure_mmhg, bool commanded) {
    if (std::isfinite(pressure_mmhg)) pressed_ = pressure_mmhg >= (pressed_ ? END_MMHG : START_MMHG);
    bool now_active = commanded || pressed_;
    if (now_active && !active_) started_ms_ = now_ms;
    active_ = now_active;
  }
  bool inflated() const { return active_; }
  float elapsed_s(uint32_t now_ms) const {
    return active_ ? static_cast<float>(now_ms - started_ms_) / 1000.0f : 0.0f;
  }

 private:
  bool active_ = false;
  bool pressed_ = false;
  uint32_t started_ms_ = 0;
};

// What the pump and the valve should do after a pressure reading. The valve is normally
// open (de-energised: the cuff deflates), so power loss, a reset or a crash deflates.
struct Outputs {
  bool pump_on = false;
  bool valve_closed = false;
  const char *trip = nullptr;  // why the cuff was deflated by the device itself, else null
};

struct SafetyLimits {
  float max_mmhg = 300.0f;     // open the valve at or above this (hard ceiling)
  float max_bout_s = 1200.0f;  // open the valve once a bout lasts this long
  float band_mmhg = 5.0f;      // pump runs below target - band, stops at target
};

// Bang-bang regulation toward the target while inflating, and the cut-offs. A trip opens the
// valve and stops the pump; the caller also turns the inflate switch off, so the cuff stays
// deflated until someone inflates it again.
inline Outputs regulate(const SafetyLimits &limits, bool commanded, float pressure_mmhg,
                        float target_mmhg, float elapsed_s, bool pump_was_on) {
  Outputs o;
  if (!commanded) return o;
  if (!std::isfinite(pressure_mmhg) || pressure_mmhg < PLAUSIBLE_MIN_MMHG ||
      pressure_mmhg > PLAUSIBLE_MAX_MMHG) {
    o.trip = "sensor fault";
    return o;
  }
  if (pressure_mmhg >= limits.max_mmhg) {
    o.trip = "over pressure";
    return o;
  }
  if (elapsed_s >= limits.max_bout_s) {
    o.trip = "over time";
    return o;
  }
  o.valve_closed = true;
  if (std::isfinite(target_mmhg) && target_mmhg > 0.0f) {
    float target = target_mmhg < limits.max_mmhg - limits.band_mmhg ? target_mmhg
                                                                   : limits.max_mmhg - limits.band_mmhg;
    o.pump_on = pump_was_on ? pressure_mmhg < target : pressure_mmhg < target - limits.band_mmhg;
  }
  return o;
}

// The value of `"key": <number>` in a flat JSON object, or NaN (missing, null, not a number).
inline float json_number(const std::string &json, const char *key) {
  std::string quoted = std::string("\"") + key + "\"";
  for (size_t at = json.find(quoted); at != std::string::npos; at = json.find(quoted, at + 1)) {
    size_t i = at + quoted.size();
    while (i < json.size() && std::isspace(static_cast<unsigned char>(json[i]))) ++i;
    if (i >= json.size() || json[i] != ':') continue;  // a string value, not a key
    ++i;
    while (i < json.size() && std::isspace(static_cast<unsigned char>(json[i]))) ++i;
    const char *start = json.c_str() + i;
    char *end = nullptr;
    float value = std::strtof(start, &end);
    if (end == start || !std::isfinite(value)) return NAN;
    return value;
  }
  return NAN;
}

// The target a retained assignment prescribes (docs/contract.md, "Assigning a cuff"):
// `target_mmhg`, else `target_pct_lop` x `lop_mmhg`; NaN when it prescribes none or the
// assignment was cleared (empty payload). The roster's prescription never reaches the cuff:
// the gateway judges against it whatever the cuff regulates to.
inline float assignment_target(const std::string &payload) {
  float target = json_number(payload, "target_mmhg");
  if (std::isfinite(target) && target > 0.0f) return target;
  float pct = json_number(payload, "target_pct_lop");
  float lop = json_number(payload, "lop_mmhg");
  if (std::isfinite(pct) && std::isfinite(lop) && pct > 0.0f && lop > 0.0f) return pct * lop / 100.0f;
  return NAN;
}

// The whole cuff: the lambdas in cuff.yaml call these.
class Cuff {
 public:
  SafetyLimits limits;
  Bout bout;
  ReadingBuffer buffer;

  // Every pressure reading (10 a second): track the bout, regulate, enforce the cut-offs.
  Outputs on_pressure(uint32_t now_ms, float pressure_mmhg, bool commanded, float target_mmhg) {
    last_pressure_ = pressure_mmhg;
    commanded_ = commanded;
    bout.update(now_ms, pressure_mmhg, commanded);
    Outputs o = regulate(limits, commanded, pressure_mmhg, target_mmhg, bout.elapsed_s(now_ms), pump_on_);
    pump_on_ = o.pump_on;
    return o;
  }

  // Every telemetry tick: one reading into the buffer, with the next seq (wraps at 2^32 by
  // unsigned arithmetic). `target_mmhg` is reported only while the cuff regulates to it
  // (told to inflate). A pressure that is not a number (a sensor that failed to answer)
  // makes no reading: NaN would get the whole message rejected, and the gateway raises
  // cuff_offline for an inflated cuff that goes silent.
  bool sample(uint32_t now_ms, float battery_pct, float target_mmhg) {
    if (!std::isfinite(last_pressure_)) return false;
    Reading r;
    r.taken_ms = now_ms;
    r.seq = next_seq_++;
    r.pressure_mmhg = last_pressure_;
    r.inflated = bout.inflated();
    r.elapsed_s = bout.elapsed_s(now_ms);
    r.battery_pct = battery_pct;
    r.target_mmhg = commanded_ ? target_mmhg : NAN;
    buffer.push(r);
    return true;
  }

  uint32_t next_seq() const { return next_seq_; }
  void set_next_seq(uint32_t seq) { next_seq_ = seq; }  // tests only

 private:
  uint32_t next_seq_ = 0;
  float last_pressure_ = NAN;
  bool commanded_ = false;
  bool pump_on_ = false;
};

// The one cuff of this firmware (a function-local static: no ESPHome globals needed).
inline Cuff &cuff() {
  static Cuff instance;
  return instance;
}

}  // namespace cuffwatch
