curl -X POST https://modelapi.holmesai.xyz/$SERVICE_ID/v1/images/control \
    -F "model=$MODEL" \
    -F "prompt=add an apple" \
    -F "image=@test.png" \
    -F "negative_prompt=" \
    -F "steps=30" \
    -F "cfg_scale=10" \
    -H "Authorization: Bearer $API_KEY" \
    -o out.png
