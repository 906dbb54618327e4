// Drives deploy/devices/esphome/cuff_telemetry.h on a PC, as cuff.yaml's lambdas do on the
// ESP32, and prints one line per case: `name<TAB>text`. tests/unit/test_esphome_device.py
// compiles this with g++, runs it, and judges each line: the payloads with the gateway's own
// decoder (gateway/decode.py), the rest as JSON.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "cuff_telemetry.h"

using cuffwatch::Cuff;
using cuffwatch::Outputs;
using cuffwatch::SafetyLimits;

static const int64_t EPOCH_MS = 1795000000000LL;  // 2026-11-18, the clock SNTP gave

static void line(const char *name, const std::string &text) {
  std::printf("%s\t%s\n", name, text.c_str());
}

static std::string outputs_json(const Outputs &o) {
  std::string s = "{\"pump_on\":";
  s += o.pump_on ? "true" : "false";
  s += ",\"valve_closed\":";
  s += o.valve_closed ? "true" : "false";
  s += ",\"trip\":";
  s += o.trip ? std::string("\"") + o.trip + "\"" : std::string("null");
  s += "}";
  return s;
}

static std::string number_json(float v) {
  if (std::isnan(v)) return "null";
  std::string s;
  cuffwatch::append_number(s, v);
  return s;
}

// Online: every tick's reading goes out at once, as one object.
static void live() {
  Cuff cuff;
  uint32_t now = 10000;
  for (int i = 0; i < 5; ++i) {
    cuff.on_pressure(now, 150.0f + static_cast<float>(i), true, 180.0f);
    cuff.sample(now, 87.0f, 180.0f);
    line("live", cuff.buffer.payload(EPOCH_MS + i * 500, now));
    cuff.buffer.clear();
    now += 500;
  }
}

// Offline for 300 ticks: the newest 256 go out as one array on reconnect.
static void offline() {
  Cuff cuff;
  uint32_t now = 5000;
  for (int i = 0; i < 300; ++i) {
    cuff.on_pressure(now, 0.0f, false, NAN);
    cuff.sample(now, 50.0f, NAN);
    now += 500;
  }
  now -= 500;
  line("offline", cuff.buffer.payload(EPOCH_MS, now));
  line("offline_dropped", std::to_string(cuff.buffer.dropped()));
}

// seq wraps from 2^32 - 1 to 0.
static void wrap() {
  Cuff cuff;
  cuff.set_next_seq(4294967294u);
  uint32_t now = 1000;
  for (int i = 0; i < 4; ++i) {
    cuff.on_pressure(now, 0.0f, false, NAN);
    cuff.sample(now, NAN, NAN);
    now += 500;
  }
  line("wrap", cuff.buffer.payload(EPOCH_MS, now - 500));
}

// millis() wraps after 49.7 days: the ages, and so the ts, stay right across it.
static void millis_wrap() {
  Cuff cuff;
  uint32_t now = 4294967295u - 999u;  // 1 s before the wrap
  for (int i = 0; i < 4; ++i) {
    cuff.on_pressure(now, 0.0f, false, NAN);
    cuff.sample(now, NAN, NAN);
    now += 500;  // wraps
  }
  line("millis_wrap", cuff.buffer.payload(EPOCH_MS, now - 500));
}

// A bout: told to inflate, pressure up, held, then the valve opens and it deflates.
static void bout() {
  Cuff cuff;
  uint32_t now = 0;
  auto tick = [&](float p, bool commanded) {
    for (int k = 0; k < 5; ++k) {  // pressure every 100 ms, a reading every 500 ms
      cuff.on_pressure(now, p, commanded, 180.0f);
      now += 100;
    }
    cuff.sample(now - 100, 80.0f, 180.0f);
  };
  tick(0.0f, false);   // at rest
  tick(5.0f, true);    // inflating: a bout from here
  tick(120.0f, true);
  tick(181.0f, true);
  tick(179.0f, false); // valve opened, still high
  tick(15.0f, false);  // falling, above END_MMHG: still the bout
  tick(4.0f, false);   // deflated
  tick(25.0f, false);  // pumped by hand: a new bout, from 0
  line("bout", cuff.buffer.payload(EPOCH_MS, now - 100));
}

// The sensor stops answering: no reading at all, never a NaN in JSON.
static void sensor_silent() {
  Cuff cuff;
  cuff.on_pressure(100, NAN, false, NAN);
  bool sampled = cuff.sample(100, 50.0f, NAN);
  line("sensor_silent", sampled ? "true" : "false");
  line("sensor_silent_size", std::to_string(cuff.buffer.size()));
}

// Values at the edges: each must still make a message the gateway accepts.
static void edges() {
  Cuff cuff;
  uint32_t now = 1000;
  const float pressures[] = {-35.0f, 700.0f, 1e30f, -1e30f, 0.04f, -0.04f};
  for (float p : pressures) {
    cuff.on_pressure(now, p, false, NAN);
    cuff.sample(now, 150.0f, 2000.0f);  // battery and target beyond their ranges: clamped
    now += 500;
  }
  cuff.on_pressure(now, 100.0f, false, NAN);
  cuff.sample(now, -5.0f, 0.0f);  // target 0: not regulating, left out
  now += 500;
  cuff.on_pressure(now, 100.0f, false, NAN);
  cuff.sample(now, INFINITY, -3.0f);  // unknown battery, negative target: both left out
  line("edges", cuff.buffer.payload(EPOCH_MS, now));
}

// The biggest message the cuff can make: 256 readings with the longest numbers.
static void biggest() {
  Cuff cuff;
  cuff.set_next_seq(4294967295u - 100u);
  uint32_t now = 0;
  for (int i = 0; i < 300; ++i) {
    cuff.on_pressure(now, -999999999.9f, true, 999.0f);
    cuff.sample(now, 100.0f, 999.9f);
    now += 1;
  }
  line("biggest", cuff.buffer.payload(253402300799999LL - 1000, now - 1));
}

static void safety() {
  SafetyLimits lim;  // 300 mmHg, 1200 s, band 5
  line("safety_idle", outputs_json(cuffwatch::regulate(lim, false, 150.0f, 180.0f, 0.0f, false)));
  line("safety_pump_below_band", outputs_json(cuffwatch::regulate(lim, true, 170.0f, 180.0f, 10.0f, false)));
  line("safety_pump_in_band_off", outputs_json(cuffwatch::regulate(lim, true, 177.0f, 180.0f, 10.0f, false)));
  line("safety_pump_in_band_on", outputs_json(cuffwatch::regulate(lim, true, 177.0f, 180.0f, 10.0f, true)));
  line("safety_pump_at_target", outputs_json(cuffwatch::regulate(lim, true, 180.0f, 180.0f, 10.0f, true)));
  line("safety_no_target", outputs_json(cuffwatch::regulate(lim, true, 100.0f, NAN, 10.0f, false)));
  line("safety_over_pressure", outputs_json(cuffwatch::regulate(lim, true, 300.0f, 180.0f, 10.0f, true)));
  line("safety_target_capped", outputs_json(cuffwatch::regulate(lim, true, 296.0f, 400.0f, 10.0f, true)));
  line("safety_over_time", outputs_json(cuffwatch::regulate(lim, true, 180.0f, 180.0f, 1200.0f, false)));
  line("safety_sensor_nan", outputs_json(cuffwatch::regulate(lim, true, NAN, 180.0f, 10.0f, true)));
  line("safety_sensor_high", outputs_json(cuffwatch::regulate(lim, true, 650.0f, 180.0f, 10.0f, true)));
  line("safety_sensor_low", outputs_json(cuffwatch::regulate(lim, true, -25.0f, 180.0f, 10.0f, true)));
  // Through the whole cuff: a trip while inflating
  Cuff cuff;
  cuff.on_pressure(0, 100.0f, true, 180.0f);
  line("safety_cuff_trip", outputs_json(cuff.on_pressure(100, 310.0f, true, 180.0f)));
}

static void assignments() {
  line("assign_target", number_json(cuffwatch::assignment_target(
      "{\"athlete\": \"a-17\", \"limb\": \"left_leg\", \"target_mmhg\": 150}")));
  line("assign_pct", number_json(cuffwatch::assignment_target(
      "{\"athlete\": \"a-17\", \"lop_mmhg\": 220, \"target_pct_lop\": 60, \"target_mmhg\": null}")));
  line("assign_none", number_json(cuffwatch::assignment_target("{\"athlete\": \"a-17\"}")));
  line("assign_cleared", number_json(cuffwatch::assignment_target("")));
  line("assign_key_as_value", number_json(cuffwatch::assignment_target(
      "{\"athlete\": \"target_mmhg\", \"target_mmhg\" : 140.5}")));
  line("assign_garbage", number_json(cuffwatch::assignment_target("{\"target_mmhg\": \"high\"}")));
}

int main() {
  live();
  offline();
  wrap();
  millis_wrap();
  bout();
  sensor_silent();
  edges();
  biggest();
  safety();
  assignments();
  return 0;
}
