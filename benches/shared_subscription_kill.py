#!/usr/bin/env python3
"""What a broker does with a dead shared-subscription member's messages
(README, "Running a fleet"; issue 21).

Two subscribers share `$share/g/s/+/x` at QoS 1 on a broker at
127.0.0.1:PORT: a survivor (auto-acknowledging) and a victim (a child process
that never acknowledges, then exits without DISCONNECT after 3 s, as a
SIGKILL would leave it). 100 QoS 1 messages are published while both are
subscribed; 8 s after the victim died the script prints how many the victim
had been given and how many of the 100 the survivor got. 50 means the
victim's share stayed with its session; 100 means the broker handed it on.

    python3 -m venv /tmp/paho && /tmp/paho/bin/pip install paho-mqtt
    mosquitto -p 18831 &
    /tmp/paho/bin/python benches/shared_subscription_kill.py 18831 main 3     # MQTT 3.1.1, persistent session
    /tmp/paho/bin/python benches/shared_subscription_kill.py 18831 main 5 0   # MQTT 5, session expiry 0 s
    /tmp/paho/bin/python benches/shared_subscription_kill.py 18831 main 5 2   # MQTT 5, session expiry 2 s

mosquitto 2.0.11, 2026-12-06 (a fresh broker for each line): the victim was
given 20 (mosquitto's in-flight window) and the survivor got 50 of 100 in
all three cases.
"""

import os
import subprocess
import sys
import time

import paho.mqtt.client as mqtt

port=int(sys.argv[1]); mode=sys.argv[2]
if mode=="victim":
    proto=mqtt.MQTTv311 if sys.argv[3]=="3" else mqtt.MQTTv5
    kw={"clean_session":False} if proto==mqtt.MQTTv311 else {}
    c=mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="victim", protocol=proto, manual_ack=True, **kw)
    n=[0]
    def on_msg(cl,u,m):
        n[0]+=1
    c.on_message=on_msg
    if proto==mqtt.MQTTv5:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes
        pr=Properties(PacketTypes.CONNECT); pr.SessionExpiryInterval=int(sys.argv[4])
        c.connect("127.0.0.1",port,clean_start=False,properties=pr)
    else:
        c.connect("127.0.0.1",port)
    c.subscribe("$share/g/s/+/x",qos=1); c.loop_start()
    time.sleep(3)
    print("victim got", n[0], flush=True)
    os._exit(0)  # no DISCONNECT, unacked
else:
    proto=mqtt.MQTTv311 if sys.argv[3]=="3" else mqtt.MQTTv5
    got=set()
    kw={"clean_session":False} if proto==mqtt.MQTTv311 else {}
    c=mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="survivor", protocol=proto, **kw)
    c.on_message=lambda cl,u,m: got.add(m.payload)
    c.connect("127.0.0.1",port); c.subscribe("$share/g/s/+/x",qos=1); c.loop_start()
    v=subprocess.Popen([sys.executable, __file__, str(port), "victim", *sys.argv[3:]])
    time.sleep(1)
    p=mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p"); p.connect("127.0.0.1",port); p.loop_start()
    for i in range(100): p.publish(f"s/d{i}/x",str(i),qos=1)
    v.wait()
    time.sleep(8)
    print(sys.argv[3:], "survivor got", len(got), "of 100", flush=True)
